"""Integration fixtures: the project's own nats-server, an in-process ledger (HoldService over
real gRPC), and order_svc's dependencies wired to real adapters."""
from __future__ import annotations

import asyncio
import os
import uuid
from contextlib import asynccontextmanager

import grpc
import pytest

os.environ.setdefault("STOCKMESH_MARKET_ALWAYS_OPEN", "1")


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory):
    from meshkit.launcher.infra import start_nats
    from meshkit.launcher.supervisor import Supervisor

    sup = Supervisor(say=lambda _: None)
    url, _ = start_nats(tmp_path_factory.mktemp("nats"), sup)
    yield url
    sup.stop_all()


@pytest.fixture(scope="session")
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def own_namespace() -> str:
    """A namespace of the test module's own, beside its own database (tests/conftest.py
    own_pool): the orders its relay publishes, and the executions of them, must not reach the
    session's engines and consumers, whose database has no such orders."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
async def nats_conn(nats_url):
    from meshkit import bus

    nc = await bus.connect(nats_url, "tests")
    yield nc
    await nc.close()


@pytest.fixture(scope="session")
async def acceptances(nats_conn, namespace):
    """The engine's acceptance notices in the session's namespace, heard from first use on."""
    from tests.support.engine import Acceptances

    heard = Acceptances()
    sub = await heard.listen(nats_conn, namespace)
    yield heard
    await sub.unsubscribe()


@asynccontextmanager
async def ledger_server(pool):
    """The ledger's gRPC services on `pool`'s database, in this process: their address."""
    from ledger_svc.bootstrap import build
    from meshkit.server import create_server

    server, port, _ = await create_server("127.0.0.1:0", build(pool))
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@pytest.fixture(scope="session")
async def ledger_addr(pool):
    async with ledger_server(pool) as addr:
        yield addr


@pytest.fixture(scope="module")
async def own_ledger_addr(own_pool):
    """The ledger on the module's own database, for the module's order_svc (order_deps) to place
    its holds in the database its orders are in."""
    async with ledger_server(own_pool) as addr:
        yield addr


def own_database_fixtures():
    """A test module's own database, namespace and ledger, in place of the session's: a module
    whose data other modules must not see (fills applied straight to the ledger, with no
    execution journal, which another module's settlement of the day would report as
    FILL_NOT_IN_JOURNAL; fills left unsettled; holds that look to order_svc's reaper like
    placements still being retried) calls it once, at module level:

        pool, database_url, namespace, ledger_addr = own_database_fixtures()

    Fixtures defined in a test module override the conftests' of the same name for that module
    only, so the session's `pool`, `database_url`, `namespace` and `ledger_addr` become
    own_pool, own_database_url, own_namespace and own_ledger_addr there; and what is built on
    them for each test comes from the module's: checked_pool (so the ledger's invariants are
    checked on the module's database after each test), order_deps, the consumers. All four go
    together, so that a test asking for any of them (a ledger over gRPC, order_svc's outbox
    relay, a command given the database's URL) never reaches the shared database from an
    isolated module; fixtures are made only when asked for, so those a module never uses cost
    nothing. A session fixture built on one of them (acceptances, on `namespace`) cannot be used
    in such a module: pytest refuses it (ScopeMismatch) rather than mix the two. Each fixture is
    named explicitly (the session fixture's name; it asks for own_<that name>), in the order of
    the line above: the names the module binds them to do not matter to pytest, only that they
    are module attributes."""
    def override(name: str):
        @pytest.fixture(scope="module", name=name)
        def module_fixture(request):
            return request.getfixturevalue(f"own_{name}")
        return module_fixture

    return tuple(override(name) for name in ("pool", "database_url", "namespace", "ledger_addr"))


def make_order_deps(pool, database_url, js, namespace, ledger_channel, *, limiter=None, account_limit=None):
    from meshkit.ratelimit import Limit, RateLimiter
    from order_svc.adapters.holds import GrpcHolds
    from meshkit.marketdata import JetStreamQuotes
    from order_svc.adapters.market import Halts
    from order_svc.adapters.outbox import OutboxRelay
    from order_svc.service_layer import handlers
    from order_svc.service_layer.unit_of_work import OrderUnitOfWork

    relay = OutboxRelay(database_url, js)
    deps = handlers.Deps(
        uow=lambda: OrderUnitOfWork(pool), holds=GrpcHolds(ledger_channel), quotes=JetStreamQuotes(js, namespace, max_age=0),
        halts=Halts(pool, ttl=0), limiter=limiter or RateLimiter(None, namespace),
        account_limit=account_limit or Limit(1e6, 1_000_000), symbol_limit=Limit(1e6, 1_000_000),
        namespace=namespace, wake_relay=relay.wake)
    return deps, relay


@pytest.fixture
async def order_deps(checked_pool, database_url, nats_conn, namespace, ledger_addr):
    from meshkit import bus

    js = nats_conn.jetstream()
    await bus.ensure_stream(js, namespace, "orders")
    channel = grpc.aio.insecure_channel(ledger_addr)
    deps, relay = make_order_deps(checked_pool, database_url, js, namespace, channel)
    task = asyncio.create_task(relay.run())
    yield deps
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await channel.close()


@pytest.fixture
async def ledger_consumer(checked_pool, nats_conn, namespace):
    """The ledger's execution consumer (settlement), running in this process."""
    from ledger_svc.service_layer import settlement
    from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
    from meshkit import executions

    uow = lambda: LedgerUnitOfWork(checked_pool)  # noqa: E731
    task = asyncio.create_task(executions.consume(
        nats_conn.jetstream(), namespace, "ledger", apply_batch=lambda exs: settlement.apply_executions(exs, uow)))
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def execution_consumers(ledger_consumer, nats_conn, namespace, order_deps):
    """The ledger's and order_svc's execution consumers, running in this process."""
    from meshkit import executions
    from order_svc.service_layer import lifecycle

    js = nats_conn.jetstream()
    task = asyncio.create_task(executions.consume(
        js, namespace, "orders", apply_batch=lambda exs: lifecycle.apply_executions(exs, order_deps)))
    yield js
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

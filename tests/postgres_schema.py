"""A fresh schema on the local PostgreSQL for one test, dropped afterwards."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def schema_url(*options: str) -> Iterator[str]:
    """Yield a URL whose connections use a new schema (plus ``-c`` ``options``); skip the test with
    the reason when the server is unreachable."""
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(
            f"PostgreSQL is not reachable at 127.0.0.1:5432 (database 'test', user 'postgres'): {exc}"
        )
    schema = "t_" + secrets.token_hex(6)
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            settings = "%20".join(
                f"-c{option.replace('=', '%3D')}" for option in (f"search_path={schema}", *options)
            )
            yield f"{POSTGRES_ADMIN_URL}?options={settings}"
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")

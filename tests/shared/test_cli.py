"""The console commands: `segments-db` and `segments-admin`, run as the user runs them."""

import asyncio
import os
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from alembic import command
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.cli import preflight
from segments_shared.db.engine import asyncpg_dsn
from segments_shared.db.migrate import alembic_config
from tests.fixtures.infra import AMQP_URL, SERVER_URL
from tests.fixtures.processes import BIN, free_port


async def run(command: str, *args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(BIN / command),
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.asyncio
async def test_upgrade_creates_the_database_and_migrations_match_the_models() -> None:
    name = f"segments_cli_{uuid.uuid4().hex[:8]}"
    url = make_url(SERVER_URL).set(database=name).render_as_string(hide_password=False)
    env = {"SEGMENTS_DATABASE_URL": url}
    try:
        code, _, err = await run("segments-db", "upgrade", env=env)
        assert code == 0, err
        code, _, err = await run("segments-db", "upgrade", env=env)  # idempotent
        assert code == 0, err
        code, out, err = await run("segments-db", "check", env=env)
        assert code == 0, out + err
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            names = await conn.fetch("SELECT name FROM segments WHERE kind = 'default'")
        finally:
            await conn.close()
        assert sorted(row["name"] for row in names) == [
            "All customers",
            "Email subscribers",
            "Lapsed customers",
            "One-time buyers",
            "Repeat buyers",
        ]
        # The migrations also go down cleanly, and up again.
        await asyncio.to_thread(command.downgrade, alembic_config(url), "base")
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            tables = await conn.fetchval(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'alembic_version'"
            )
        finally:
            await conn.close()
        assert tables == 0
        code, _, err = await run("segments-db", "upgrade", env=env)
        assert code == 0, err
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(make_url(SERVER_URL)))
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.mark.asyncio
async def test_keys_are_created_once_listed_and_revoked(
    service_env: dict[str, str], clean_db: AsyncEngine, api: httpx.AsyncClient
) -> None:
    code, out, err = await run(
        "segments-admin",
        "create-key",
        "--name",
        "frontend",
        "--scopes",
        "segments:read",
        env=service_env,
    )
    assert code == 0, err
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    key, key_id = fields["key"], fields["id"]
    assert key.startswith("sk_")
    assert len(key) > 40

    reader = {"Authorization": f"Bearer {key}"}
    assert (await api.get("/v1/segments", headers=reader)).status_code == 200
    forbidden = await api.post("/v1/segments", json={"name": "x"}, headers=reader)
    assert forbidden.status_code == 403
    assert "segments:write" in forbidden.json()["detail"]

    code, out, _ = await run("segments-admin", "list-keys", env=service_env)
    assert code == 0
    assert key_id in out
    assert key not in out

    code, _, err = await run("segments-admin", "revoke-key", key_id, env=service_env)
    assert code == 0, err
    assert (await api.get("/v1/segments", headers=reader)).status_code == 401

    code, _, err = await run(
        "segments-admin", "create-key", "--name", "bad", "--scopes", "root", env=service_env
    )
    assert code != 0
    assert "scopes" in err


def preflight_env(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    monkeypatch.setenv("SEGMENTS_AMQP_URL", AMQP_URL)
    for name in ("URL", "POOLING", "DIRECT_URL"):
        monkeypatch.delenv(f"SEGMENTS_DATABASE_{name}", raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(f"SEGMENTS_DATABASE_{name.upper()}", value)


def moved(url: str, **parts: Any) -> str:
    return make_url(url).set(**parts).render_as_string(hide_password=False)


@pytest.mark.asyncio
async def test_preflight_checks_the_server_directly_and_the_pool_on_its_own_database(
    monkeypatch: pytest.MonkeyPatch, database_url: str, pgbouncer_url: str
) -> None:
    """Behind PgBouncer (which serves our database, not `postgres`): the server is checked on
    the direct URL, the pool on the database the services query through it."""
    preflight_env(monkeypatch, url=pgbouncer_url, pooling="transaction", direct_url=database_url)
    assert await preflight.check() == []

    # The pool does not serve the database named in SEGMENTS_DATABASE_URL.
    pgbouncer = make_url(pgbouncer_url)
    preflight_env(
        monkeypatch,
        url=moved(pgbouncer_url, database="not_served"),
        pooling="transaction",
        direct_url=database_url,
    )
    [problem] = await preflight.check()
    assert problem.startswith(
        f"The pooler (PgBouncer) of SEGMENTS_DATABASE_URL is not reachable at "
        f"{pgbouncer.host}:{pgbouncer.port} ("
    ), problem

    # The direct URL is where nothing listens.
    port = free_port()
    preflight_env(
        monkeypatch,
        url=pgbouncer_url,
        pooling="transaction",
        direct_url=moved(database_url, host="127.0.0.1", port=port),
    )
    [problem] = await preflight.check()
    assert problem.startswith(f"PostgreSQL is not reachable at 127.0.0.1:{port} ("), problem

    # Transaction pooling without a direct URL: the services would not start.
    preflight_env(monkeypatch, url=pgbouncer_url, pooling="transaction")
    problems = await preflight.check()
    assert "needs SEGMENTS_DATABASE_DIRECT_URL" in problems[0]


@pytest.mark.asyncio
async def test_preflight_accepts_a_pooled_database_not_created_yet(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """`segments-db upgrade`, run next, creates it through the direct URL."""
    preflight_env(
        monkeypatch,
        url=moved(database_url, database=f"segments_missing_{uuid.uuid4().hex[:8]}"),
        pooling="transaction",
        direct_url=database_url,
    )
    assert await preflight.check() == []
    # Without pooling the server alone is checked, through `postgres`, as before.
    preflight_env(monkeypatch, url=moved(database_url, database="segments_missing"))
    assert await preflight.check() == []

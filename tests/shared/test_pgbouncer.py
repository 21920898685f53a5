"""Behind PgBouncer in transaction mode (docs/operations.md#behind-pgbouncer): the services
work through a real PgBouncer whose two server connections every transaction shares, and
what keeps session state (LISTEN, the relay's leader lock, vendor slots, migrations) takes
the direct URL."""

import asyncio
import os
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from segment_api.settings import ApiSettings
from segments_shared.db.engine import asyncpg_dsn
from tests.fakes.server import serve
from tests.fakes.webhook import WebhookState, create_app
from tests.fixtures.api import serving
from tests.fixtures.infra import ADMIN_KEY
from tests.fixtures.processes import BIN, Suite, running_suite
from tests.support.pgbouncer import POOLED_MARK
from tests.support.statement_names import StatementNames
from tests.support.waiting import eventually

SECRET = "pgbouncer-webhook-secret-0123456789"
GOLD = {"field": "attributes.tier", "op": "eq", "value": "gold"}
CUSTOMERS = 24


async def put(api: httpx.AsyncClient, path: str, body: dict[str, Any]) -> None:
    response = await api.put(path, json=body)
    assert response.status_code in (200, 201), response.text


async def session_state(database_url: str) -> dict[str, Any]:
    """Who keeps session state on the test database: pooled (through PgBouncer) or not."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await conn.fetch(
            "SELECT application_name, query, "
            "EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory' "
            "AND l.granted) AS locks "
            "FROM pg_stat_activity a WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    pooled = [row for row in rows if POOLED_MARK in row["application_name"]]
    direct = [row for row in rows if POOLED_MARK not in row["application_name"]]
    return {
        "pooled backends": len(pooled) > 0,
        # The two workers' relays: the leader lock and a candidate lock, or a candidate lock.
        "direct holding advisory locks": sum(row["locks"] for row in direct) >= 2,
        "direct listening": sum(row["query"].startswith("LISTEN ") for row in direct),
        "direct taking vendor slots": any(
            "pg_try_advisory_lock(CAST(" in row["query"]
            or "pg_advisory_unlock(CAST(" in row["query"]
            for row in direct
        ),
    }


@pytest_asyncio.fixture
async def pooled_suite(
    pgbouncer_url: str,
    database_url: str,
    service_env: dict[str, str],
    clean_db: AsyncEngine,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Suite]:
    """The three services on the database through PgBouncer, session state direct."""
    env = {
        **service_env,
        "SEGMENTS_DATABASE_URL": pgbouncer_url,
        "SEGMENTS_DATABASE_POOLING": "transaction",
        "SEGMENTS_DATABASE_DIRECT_URL": database_url,
        "SEGMENTS_RULE_REFRESH_DEBOUNCE_SECONDS": "0.2",
        "SEGMENTS_RULE_REFRESH_POLL_SECONDS": "0.1",
    }
    async with running_suite(env, tmp_path, request) as suite:
        yield suite


@pytest.mark.e2e
@pytest.mark.asyncio
async def test_the_services_work_through_transaction_pooling(
    pooled_suite: Suite, database_url: str
) -> None:
    suite = pooled_suite
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=suite["segment-api"].url, headers=headers) as api:
        # Many requests at once over two server connections: transactions move between them.
        await asyncio.gather(
            *(
                put(
                    api,
                    f"/v1/customers/c{i}",
                    {
                        "email": f"c{i}@example.com",
                        "email_status": "subscribed",
                        "attributes": {"tier": "gold" if i % 3 == 0 else "silver"},
                    },
                )
                for i in range(CUSTOMERS)
            )
        )
        await asyncio.gather(
            *(
                put(
                    api,
                    f"/v1/orders/o{i}",
                    {
                        "customer_external_id": f"c{i % 4}",
                        "total": "10.00",
                        "placed_at": f"2026-01-{i % 28 + 1:02d}T00:00:00Z",
                        "status": "placed",
                    },
                )
                for i in range(CUSTOMERS)
            )
        )

        created = await api.post("/v1/segments", json={"name": "Buyers"})
        assert created.status_code == 201, created.text
        buyers = created.json()["id"]
        added = await api.post(
            f"/v1/segments/{buyers}/members", json={"external_ids": ["c0", "c1", "c2", "c3"]}
        )
        assert added.json() == {"added": 4, "already_members": 0, "not_found": []}

        # The metrics-worker folds the events the relay published into the KPIs.
        async def metrics() -> dict[str, Any]:
            body: dict[str, Any] = (await api.get(f"/v1/segments/{buyers}/metrics")).json()
            return body

        expected = {"customers": 4, "total_orders": CUSTOMERS, "total_revenue": "240.00"}
        figures = await eventually(
            metrics, lambda m: {k: m.get(k) for k in expected} == expected, within=30
        )
        assert {k: figures.get(k) for k in expected} == expected

        # segment-api's refresher builds a rule segment, then follows a change.
        rule = await api.post(
            "/v1/segments", json={"name": "Gold", "definition": {"type": "rule", "rule": GOLD}}
        )
        assert rule.status_code == 201, rule.text
        gold = rule.json()["id"]

        async def gold_members() -> int:
            count: int = (await api.get(f"/v1/segments/{gold}")).json()["member_count"]
            return count

        assert await eventually(gold_members, lambda n: n == CUSTOMERS // 3, within=30) == 8
        await put(
            api,
            "/v1/customers/c1",
            {
                "email": "c1@example.com",
                "email_status": "subscribed",
                "attributes": {"tier": "gold"},
            },
        )
        assert await eventually(gold_members, lambda n: n == 9, within=30) == 9

        export = await api.get(f"/v1/segments/{buyers}/export.csv")
        assert export.status_code == 200, export.text
        assert export.text.splitlines()[1:] == [f"c{i}@example.com" for i in range(4)]

        # The sync-worker sends through the vendor limiter's slots.
        webhook = WebhookState(secret=SECRET)
        async with serve(create_app(webhook)) as hook_url:
            destination = await api.post(
                "/v1/destinations",
                json={
                    "name": "Hook",
                    "type": "webhook",
                    "config": {"url": f"{hook_url}/segments", "secret": SECRET},
                },
            )
            assert destination.status_code == 201, destination.text
            started = await api.post(
                f"/v1/segments/{buyers}/syncs",
                json={"destination_id": destination.json()["id"]},
            )
            assert started.status_code == 202, started.text

            async def run() -> dict[str, Any]:
                body: dict[str, Any] = (await api.get(f"/v1/syncs/{started.json()['id']}")).json()
                return body

            finished = await eventually(
                run, lambda r: r["status"] not in ("queued", "running"), within=30
            )
            assert finished["status"] == "succeeded", finished
            assert webhook.external_ids(buyers) == {"c0", "c1", "c2", "c3"}

        assert await session_state(database_url) == {
            "pooled backends": True,
            "direct holding advisory locks": True,
            "direct listening": 3,  # one per service
            "direct taking vendor slots": True,
        }

    codes = await suite.stop()
    assert codes == {"segment-api": 0, "sync-worker": 0, "metrics-worker": 0}
    for name in codes:
        assert "prepared statement" not in suite[name].logs(), name


@pytest.mark.asyncio
async def test_no_statement_outlives_its_transaction(
    api_settings: ApiSettings, database_url: str, clean_db: AsyncEngine
) -> None:
    """With SEGMENTS_DATABASE_POOLING=transaction segment-api prepares every statement
    unnamed, the CSV export's cursor included: nothing is left on a server connection for
    another client to trip over. Its connections go through a proxy that reads the names."""
    from segment_api.main import create_app

    url = make_url(database_url)
    proxy = StatementNames(url.host or "127.0.0.1", url.port or 5432)
    async with proxy.running() as port:
        settings = api_settings.model_copy(
            update={
                "database_url": url.set(port=port).render_as_string(hide_password=False),
                "database_pooling": "transaction",
                "database_direct_url": database_url,
            }
        )
        app = create_app(settings)
        async with serving(app) as api:
            await put(api, "/v1/customers/c1", {"email": "c1@example.com"})
            await put(api, "/v1/customers/c1", {"email": "c1@example.com", "first_name": "Ada"})
            await put(
                api,
                "/v1/orders/o1",
                {
                    "customer_external_id": "c1",
                    "total": "5.00",
                    "placed_at": "2026-01-01T00:00:00Z",
                },
            )
            created = await api.post("/v1/segments", json={"name": "One"})
            segment_id = created.json()["id"]
            await api.post(f"/v1/segments/{segment_id}/members", json={"external_ids": ["c1"]})
            for path in ("", "/members", "/metrics", "/export.csv"):
                response = await api.get(f"/v1/segments/{segment_id}{path}")
                assert response.status_code == 200, response.text
    assert proxy.parsed > 20  # the proxy did see the statements
    assert proxy.names == []


@pytest.mark.asyncio
async def test_migrations_take_the_direct_url(database_url: str) -> None:
    nothing_listens = "postgresql+asyncpg://postgres@127.0.0.1:1/segments"
    env = {
        **os.environ,
        "SEGMENTS_DATABASE_URL": nothing_listens,
        "SEGMENTS_DATABASE_DIRECT_URL": database_url,
    }
    process = await asyncio.create_subprocess_exec(
        str(BIN / "segments-db"), "current", env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert "(head)" in out.decode()

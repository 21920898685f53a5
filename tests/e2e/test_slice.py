"""The thin slice through all three services as real processes: an HTTP change reaches both
workers through RabbitMQ and comes back as KPIs and as signed webhook batches."""

from typing import Any

import httpx
import pytest

from tests.fakes.server import serve
from tests.fakes.webhook import WebhookState, create_app
from tests.fixtures.infra import ADMIN_KEY
from tests.fixtures.processes import PORT_VARIABLES, Suite
from tests.support.sockets import listening_hosts
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

SECRET = "e2e-webhook-secret-0123456789"


async def put(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.put(path, json=body)
    assert response.status_code in (200, 201), response.text
    result: dict[str, Any] = response.json()
    return result


@pytest.mark.asyncio
async def test_change_reaches_both_workers(suite: Suite) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "X-Correlation-ID": "e2e-slice-1"}
    async with httpx.AsyncClient(base_url=suite["segment-api"].url, headers=headers) as api:
        await put(
            api,
            "/v1/customers/c1",
            {"email": "c1@example.com", "email_status": "subscribed", "first_name": "Ada"},
        )
        await put(
            api, "/v1/customers/c2", {"email": "c2@example.com", "email_status": "unsubscribed"}
        )
        await put(api, "/v1/customers/c3", {"first_name": "No email"})
        await put(
            api, "/v1/customers/c4", {"email": "c4@example.com", "email_status": "subscribed"}
        )
        orders = [
            ("o1", "c1", "10.00", "2026-01-01T00:00:00Z", "placed"),
            ("o2", "c1", "20.01", "2026-01-03T12:00:00Z", "placed"),
            ("o3", "c1", "100.00", "2026-01-05T00:00:00Z", "cancelled"),
            ("o4", "c1", "5.00", "2026-01-10T00:00:00Z", "placed"),
            ("o5", "c3", "4.99", "2026-02-01T08:30:00+02:00", "placed"),
            ("o6", "c4", "1000.00", "2026-02-01T00:00:00Z", "placed"),
        ]
        for order_id, customer, total, placed_at, status in orders:
            await put(
                api,
                f"/v1/orders/{order_id}",
                {
                    "customer_external_id": customer,
                    "total": total,
                    "placed_at": placed_at,
                    "status": status,
                },
            )

        created = await api.post("/v1/segments", json={"name": "E2E buyers"})
        assert created.status_code == 201, created.text
        segment_id = created.json()["id"]
        added = await api.post(
            f"/v1/segments/{segment_id}/members", json={"external_ids": ["c1", "c2", "c3"]}
        )
        assert added.json() == {"added": 3, "already_members": 0, "not_found": []}

        # c1: 35.01 over 3 placed orders, gaps 2.5 and 6.5 days; c3: 4.99; c2: nothing.
        expected = {
            "customers": 3,
            "reachable_customers": 1,
            "total_revenue": "40.00",
            "total_orders": 4,
            "average_order_value": "10.00",
            "customer_lifetime_value": "13.33",
            "order_latency_days": 4.5,
            "stale": False,
        }

        async def metrics() -> dict[str, Any]:
            body: dict[str, Any] = (await api.get(f"/v1/segments/{segment_id}/metrics")).json()
            return body

        figures = await eventually(
            metrics, lambda m: {k: m.get(k) for k in expected} == expected, within=20
        )
        assert {k: figures.get(k) for k in expected} == expected
        assert figures["computed_at"] is not None

        webhook = WebhookState(secret=SECRET)
        async with serve(create_app(webhook)) as hook_url:
            destination = await api.post(
                "/v1/destinations",
                json={
                    "name": "E2E hook",
                    "type": "webhook",
                    "config": {"url": f"{hook_url}/segments", "secret": SECRET},
                },
            )
            assert destination.status_code == 201, destination.text
            assert destination.json()["config"]["secret"] != SECRET
            destination_id = destination.json()["id"]

            run = await sync_and_wait(api, segment_id, destination_id)
            assert run["status"] == "succeeded", run
            assert run["stats"]["added"] == 3
            assert webhook.external_ids(segment_id) == {"c1", "c2", "c3"}
            assert webhook.bad_signatures == 0
            first = webhook.batches[0]
            assert first["segment_name"] == "E2E buyers"
            assert {m["external_id"]: m["email"] for m in first["added"]} == {
                "c1": "c1@example.com",
                "c2": "c2@example.com",
                "c3": None,
            }

            # Incremental: only the changes travel.
            await api.post(
                f"/v1/segments/{segment_id}/members/remove", json={"external_ids": ["c2"]}
            )
            await api.post(
                f"/v1/segments/{segment_id}/members", json={"emails": ["C4@example.com"]}
            )
            batches_before = len(webhook.batches)
            run = await sync_and_wait(api, segment_id, destination_id)
            assert run["status"] == "succeeded", run
            assert (run["stats"]["added"], run["stats"]["removed"]) == (1, 1)
            assert webhook.external_ids(segment_id) == {"c1", "c3", "c4"}
            sent = webhook.batches[batches_before:]
            assert [m["external_id"] for b in sent for m in b["added"]] == ["c4"]
            assert [m["external_id"] for b in sent for m in b["removed"]] == ["c2"]

        segment = (await api.get(f"/v1/segments/{segment_id}")).json()
        assert segment["delivery"][0]["destination_id"] == destination_id
        assert segment["delivery"][0]["state"] == "synced"

    codes = await suite.stop()
    assert codes == {"segment-api": 0, "sync-worker": 0, "metrics-worker": 0}
    # The request's correlation id followed the change through the events to the workers.
    assert '"correlation_id": "e2e-slice-1"' in suite["sync-worker"].logs()


async def sync_and_wait(
    api: httpx.AsyncClient, segment_id: str, destination_id: str
) -> dict[str, Any]:
    started = await api.post(
        f"/v1/segments/{segment_id}/syncs", json={"destination_id": destination_id}
    )
    assert started.status_code == 202, started.text
    assert started.json()["status"] in ("queued", "running")
    run_id = started.json()["id"]

    async def status() -> dict[str, Any]:
        body: dict[str, Any] = (await api.get(f"/v1/syncs/{run_id}")).json()
        return body

    return await eventually(status, lambda r: r["status"] not in ("queued", "running"), within=20)


@pytest.mark.asyncio
async def test_every_port_listens_on_the_bind_host_only(suite: Suite) -> None:
    # The suite runs with SEGMENTS_BIND_HOST=127.0.0.1 (tests/fixtures/processes.py).
    hosts = {name: listening_hosts(suite[name].port) for name in PORT_VARIABLES}
    assert hosts == {name: {"127.0.0.1"} for name in PORT_VARIABLES}

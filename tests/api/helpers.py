"""Small helpers the API tests share."""

from typing import Any

import httpx
import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.metrics.store import fold_due

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["type"].startswith("https://")
    assert "Traceback" not in response.text
    return body


async def make_segment(api: httpx.AsyncClient, name: str = "Segment", **fields: Any) -> str:
    response = await api.post("/v1/segments", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    segment_id: str = response.json()["id"]
    return segment_id


async def make_customers(api: httpx.AsyncClient, *specs: dict[str, Any]) -> None:
    response = await api.post("/v1/customers/bulk", json={"customers": list(specs)})
    assert response.status_code == 200, response.text


async def events(engine: AsyncEngine, event_type: str) -> list[dict[str, Any]]:
    """Events of a type written to the outbox, oldest first."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT payload FROM outbox WHERE event_type = :t ORDER BY id"), {"t": event_type}
        )
        return [row.payload for row in rows]


async def is_stale(api: httpx.AsyncClient, segment_id: str) -> bool:
    """The segment's KPIs wait for a change to be folded in (docs/contract.md#kpis)."""
    response = await api.get(f"/v1/segments/{segment_id}/metrics")
    assert response.status_code == 200, response.text
    return bool(response.json()["stale"])


async def clear_staleness(engine: AsyncEngine) -> None:
    """Folds every pending change into the KPIs, as the metrics-worker does."""
    await fold_due(engine)


def schema_validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator of the OpenAPI document's schema `name`, its references resolved in the
    document."""
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    return jsonschema.Draft202012Validator(
        {"$ref": f"urn:openapi#/components/schemas/{name}"},
        registry=Registry().with_resource("urn:openapi", resource),
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )

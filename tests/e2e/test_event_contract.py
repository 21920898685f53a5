"""The events the three services publish, captured from the exchange as a consumer of our own
would, against the committed AsyncAPI document (docs/asyncapi.json): each message is valid for
its type's schema, and every attribute and data field it carries is one the schema requires,
so that a consumer generated from the document gets none of them as optional."""

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from jsonschema import Draft7Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from segments_shared.bus.topology import Topology
from tests.fakes.server import serve
from tests.fakes.webhook import WebhookState, create_app
from tests.fixtures.infra import ADMIN_KEY
from tests.fixtures.processes import Suite
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]
DOCUMENT_URI = "urn:segments:asyncapi"
SECRET = "event-contract-secret-0123456789"


@dataclass(frozen=True)
class Captured:
    routing_key: str | None
    content_type: str | None
    message_id: str | None
    persistent: bool
    body: dict[str, Any]


class Contract:
    """The document's message schemas by event type. AsyncAPI 3.0's default schema format is
    a superset of JSON Schema draft 7, so draft 7 it is, with formats (`uuid`, `date-time`)
    checked."""

    def __init__(self, document: dict[str, Any]) -> None:
        resource = Resource.from_contents(document, default_specification=DRAFT7)
        self.registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, resource)
        self.payloads = {
            message["name"]: DOCUMENT_URI + message["payload"]["$ref"]
            for message in document["components"]["messages"].values()
        }

    def errors(self, event: dict[str, Any]) -> list[str]:
        payload = self.payloads.get(event.get("type", ""))
        if payload is None:
            return [f"type {event.get('type')!r} is not in the document"]
        validator = Draft7Validator(
            {"$ref": payload}, registry=self.registry, format_checker=FormatChecker()
        )
        return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(event)]

    def optional_but_carried(self, event: dict[str, Any]) -> set[str]:
        """Where the event has a key its schema does not require."""
        # Every reference in the document is to a place in the document.
        resolver = self.registry.resolver(base_uri=DOCUMENT_URI)

        def schema_at(reference: str) -> dict[str, Any]:
            contents: dict[str, Any] = resolver.lookup(reference).contents
            return contents

        return _optional_keys(event, schema_at(self.payloads[event["type"]]), schema_at, "$")


def _optional_keys(
    instance: Any,
    schema: dict[str, Any],
    schema_at: Callable[[str], dict[str, Any]],
    path: str,
) -> set[str]:
    if "$ref" in schema:
        return _optional_keys(instance, schema_at(schema["$ref"]), schema_at, path)
    found: set[str] = set()
    # A nullable field: only an object branch has keys to check.
    for branch in schema.get("anyOf", []):
        found |= _optional_keys(instance, branch, schema_at, path)
    if isinstance(instance, dict) and "properties" in schema:
        required = set(schema.get("required", []))
        for key, value in instance.items():
            if key not in required:
                found.add(f"{path}.{key}")
            if key in schema["properties"]:
                found |= _optional_keys(
                    value, schema["properties"][key], schema_at, f"{path}.{key}"
                )
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            found |= _optional_keys(item, schema["items"], schema_at, f"{path}[]")
    return found


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract(json.loads((ROOT / "docs" / "asyncapi.json").read_text()))


def test_the_contract_check_catches_an_optional_attribute(contract: Contract) -> None:
    """The check the flow below relies on, against a document whose envelope requires only
    `source` and `data`, as it once did: an event's `id`, `type` and `time` are reported."""
    document = json.loads((ROOT / "docs" / "asyncapi.json").read_text())
    document["components"]["schemas"]["CustomerChanged"]["required"] = ["source", "data"]
    event = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "segment-api",
        "type": "customer.changed",
        "time": "2026-11-25T06:20:17.118615Z",
        "subject": "c1",
        "datacontenttype": "application/json",
        "correlationid": None,
        "data": {"customer_external_ids": ["c1"], "note": "an undocumented field"},
    }
    assert contract.errors(event) == []
    assert contract.optional_but_carried(event) == {"$.data.note"}
    assert Contract(document).optional_but_carried(event) == {
        "$.specversion",
        "$.id",
        "$.type",
        "$.time",
        "$.subject",
        "$.datacontenttype",
        "$.correlationid",
        "$.data.note",
    }
    assert contract.errors({**event, "time": "yesterday"}) == [
        "$.time: 'yesterday' is not a 'date-time'"
    ]


async def ok(response: httpx.Response, *codes: int) -> dict[str, Any]:
    assert response.status_code in (codes or (200, 201)), response.text
    return response.json() if response.content else {}


@pytest.mark.asyncio
async def test_every_event_published_matches_the_asyncapi_document(
    broker: AbstractConnection, bus_prefix: str, suite: Suite, contract: Contract
) -> None:
    captured: list[Captured] = []

    async def keep(message: AbstractIncomingMessage) -> None:
        captured.append(
            Captured(
                routing_key=message.routing_key,
                content_type=message.content_type,
                message_id=message.message_id,
                persistent=message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT,
                body=json.loads(message.body),
            )
        )

    # A listener of our own, as docs/events.md tells other services to bind one.
    channel = await broker.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(Topology(bus_prefix).events_exchange, routing_key="#")
    await queue.consume(keep, no_ack=True)

    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "X-Correlation-ID": "event-contract"}
    webhook = WebhookState(secret=SECRET)
    async with (
        httpx.AsyncClient(base_url=suite["segment-api"].url, headers=headers) as api,
        serve(create_app(webhook)) as hook_url,
    ):
        # customer.changed (one, then a bulk call), order.recorded
        for external_id, status in (("c1", "subscribed"), ("c2", "unsubscribed")):
            body = {"email": f"{external_id}@example.com", "email_status": status}
            await ok(await api.put(f"/v1/customers/{external_id}", json=body))
        await ok(
            await api.post(
                "/v1/customers/bulk",
                json={"customers": [{"external_id": "c3"}, {"external_id": "c4"}]},
            )
        )
        order = {
            "customer_external_id": "c1",
            "total": "12.50",
            "placed_at": "2026-01-02T00:00:00Z",
        }
        await ok(await api.put("/v1/orders/o1", json=order))

        # segment.created, segment.members_changed (added, removed), segment.updated,
        # segment.deactivated, segment.activated; metrics.updated follows from the worker
        manual = (await ok(await api.post("/v1/segments", json={"name": "Contract"}), 201))["id"]
        members = f"/v1/segments/{manual}/members"
        await ok(await api.post(members, json={"external_ids": ["c1", "c2", "c3"]}))
        await ok(await api.post(f"{members}/remove", json={"external_ids": ["c2"]}))
        await ok(await api.patch(f"/v1/segments/{manual}", json={"name": "Contract, renamed"}))
        await ok(await api.post(f"/v1/segments/{manual}/deactivate"))
        await ok(await api.post(f"/v1/segments/{manual}/activate"))

        # A rule segment: its first refresh, then a requested one and a customer's change
        rule = {"field": "email_status", "op": "eq", "value": "subscribed"}
        ruled = await ok(
            await api.post(
                "/v1/segments",
                json={"name": "Subscribed", "definition": {"type": "rule", "rule": rule}},
            ),
            201,
        )
        await ok(
            await api.put(
                "/v1/customers/c4", json={"email": "c4@example.com", "email_status": "subscribed"}
            )
        )
        await ok(await api.post(f"/v1/segments/{ruled['id']}/refresh"), 202, 409)

        # sync.requested, sync.completed (the webhook fake receives the members)
        destination = await ok(
            await api.post(
                "/v1/destinations",
                json={
                    "name": "Contract hook",
                    "type": "webhook",
                    "config": {"url": f"{hook_url}/segments", "secret": SECRET},
                },
            ),
            201,
        )
        started = await ok(
            await api.post(
                f"/v1/segments/{manual}/syncs", json={"destination_id": destination["id"]}
            ),
            202,
        )

        async def run() -> dict[str, Any]:
            return await ok(await api.get(f"/v1/syncs/{started['id']}"))

        finished = await eventually(
            run, lambda r: r["status"] not in ("queued", "running"), within=30
        )
        assert finished["status"] == "succeeded", finished

        # customer.erased (and the member it takes away), segment.deleted
        await ok(await api.delete("/v1/customers/c3"), 204)
        await ok(await api.delete(f"/v1/segments/{manual}"), 204)

        expected = set(contract.payloads)

        async def seen() -> set[str]:
            return {message.body.get("type", "") for message in captured}

        types = await eventually(seen, lambda types: types >= expected, within=30)
        # Whatever the relay still has (a metrics.updated a moment behind) is checked too.
        await asyncio.sleep(1)

    assert types >= expected, f"never published: {sorted(expected - types)}"
    problems: dict[str, list[str]] = {}
    for message in captured:
        event = message.body
        found = contract.errors(event)
        found += [
            f"{key}: carried but not required" for key in contract.optional_but_carried(event)
        ]
        if message.routing_key != event.get("type"):
            found.append(f"routing key {message.routing_key!r}")
        if message.message_id != event.get("id"):
            found.append(f"message_id {message.message_id!r}")
        if message.content_type != "application/cloudevents+json":
            found.append(f"content_type {message.content_type!r}")
        if not message.persistent:
            found.append("not persistent")
        if found:
            problems.setdefault(str(event.get("type")), sorted(set(found)))
    assert problems == {}, json.dumps(problems, indent=2)
    assert {message.body["source"] for message in captured} == {
        "segment-api",
        "sync-worker",
        "metrics-worker",
    }

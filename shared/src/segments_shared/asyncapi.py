"""The AsyncAPI 3.0 document of the events, generated from the contracts in `events.py`.

`python -m segments_shared.asyncapi > docs/asyncapi.json` refreshes the committed copy; a
test fails when the two differ.
"""

import json
import sys
from typing import Any

from pydantic import TypeAdapter

from segments_shared.bus.topology import DELIVERY_LIMIT, SERVICE_BINDINGS, UNROUTED_MAX_LENGTH
from segments_shared.events import EVENT_TYPES, Event

DESCRIPTIONS = {
    "segment.created": "A segment was created.",
    "segment.updated": "A user edited a segment (name, description, definition, kind).",
    "segment.deleted": "A segment was deleted.",
    "segment.activated": "A deactivated segment was activated again.",
    "segment.deactivated": "A segment was deactivated: it keeps its members, is not "
    "refreshed and cannot be synced.",
    "segment.members_changed": "Members entered or left a segment; exact counts, the new "
    "membership version, and who (customer external ids in `added_ids` and `removed_ids`, at "
    "most 1,000 each side per event: a larger change is several events numbered `part` 1 to "
    "`parts`, with the same counts and version, which together name everyone).",
    "customer.changed": "Customers were created or updated (at most 1,000 ids per event).",
    "customer.erased": "Customers were erased (right to erasure; at most 1,000 ids per event).",
    "order.recorded": "Orders were created or updated (at most 1,000 per event).",
    "sync.requested": "A sync run or promotion was queued. Internal: it wakes our sync-worker, "
    "which also finds queued runs without it; follow sync.completed for outcomes.",
    "sync.completed": "A sync run ended, with its status and stats.",
    "metrics.updated": "A segment's KPIs were recomputed; the figures are included.",
}


# Wake-ups between our own services. Anyone may listen and the same additive versioning holds,
# but they promise nothing beyond a hint; every other type is the public contract.
INTERNAL_TYPES = frozenset({"sync.requested"})


def _message_name(event_type: str) -> str:
    return event_type.replace(".", "_")


def build() -> dict[str, Any]:
    # The schema of what is published (every field written, so every field required: see
    # ALWAYS_WRITTEN in events.py), not of what a constructor accepts.
    schema = TypeAdapter(Event).json_schema(
        ref_template="#/components/schemas/{model}", mode="serialization"
    )
    schemas: dict[str, Any] = dict(schema.get("$defs", {}))
    by_type: dict[str, str] = {}
    for name, definition in schemas.items():
        event_type = definition.get("properties", {}).get("type", {}).get("const")
        if event_type:
            by_type[event_type] = name
    messages = {
        _message_name(event_type): {
            "name": event_type,
            "title": event_type,
            "summary": DESCRIPTIONS[event_type],
            "contentType": "application/cloudevents+json",
            "payload": {"$ref": f"#/components/schemas/{by_type[event_type]}"},
            "correlationId": {"$ref": "#/components/correlationIds/request"},
            "tags": [{"name": "internal" if event_type in INTERNAL_TYPES else "public"}],
        }
        for event_type in EVENT_TYPES
    }
    consumers = {
        event_type: sorted(s for s, patterns in SERVICE_BINDINGS.items() if event_type in patterns)
        for event_type in EVENT_TYPES
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Segments events",
            "version": "1.0.0",
            "description": (
                "Every event is a CloudEvents 1.0 document in structured mode, published "
                "persistent to the topic exchange `<prefix>.events` with the routing key equal "
                "to its `type` and `message_id` equal to its `id`. Delivery is at least once: "
                "consumers must be idempotent by event id. Each service's queue is a durable "
                f"quorum queue `<prefix>.<service>` with x-delivery-limit {DELIVERY_LIMIT} and a "
                "dead-letter queue `<prefix>.<service>.dlq`; events no queue binds are kept in "
                f"`<prefix>.unrouted`, bounded at {UNROUTED_MAX_LENGTH:,} messages (the oldest "
                "dropped first). The `correlationid` extension attribute carries the id of "
                "the request that caused the event. Messages tagged `public` are the contract "
                "for other services; `internal` ones are wake-ups between our own services, "
                "readable but promising nothing beyond a hint. Contracts change additively; a "
                "breaking change gets a new type name."
            ),
        },
        "defaultContentType": "application/cloudevents+json",
        "channels": {
            "events": {
                "address": "{prefix}.events",
                "description": "Topic exchange; routing key = event type.",
                "parameters": {
                    "prefix": {"description": "SEGMENTS_BUS_PREFIX", "default": "segments"}
                },
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
                "bindings": {
                    "amqp": {
                        "is": "routingKey",
                        "exchange": {"type": "topic", "durable": True, "autoDelete": False},
                        "bindingVersion": "0.3.0",
                    }
                },
            }
        },
        "operations": {
            f"publish_{name}": {
                "action": "send",
                "channel": {"$ref": "#/channels/events"},
                "messages": [{"$ref": f"#/channels/events/messages/{name}"}],
                "description": (
                    f"Consumed by: {', '.join(consumers[event_type]) or 'no service of the suite'}"
                ),
            }
            for name, event_type in zip(messages, EVENT_TYPES, strict=True)
        },
        "components": {
            "messages": messages,
            "schemas": schemas,
            "correlationIds": {
                "request": {
                    "description": "The id of the request that caused the event; null when "
                    "no request did.",
                    "location": "$message.payload#/correlationid",
                }
            },
        },
    }


def main() -> None:
    sys.stdout.write(json.dumps(build(), indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

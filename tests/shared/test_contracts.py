"""The event contracts and their published documentation agree."""

import json
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from segments_shared.asyncapi import build
from segments_shared.bus.topology import SERVICE_BINDINGS
from segments_shared.events import (
    EVENT_TYPES,
    CustomerChanged,
    CustomerIds,
    MembersChanged,
    SegmentMembersChanged,
    event_json,
    parse_event,
)

ROOT = Path(__file__).parents[2]


def test_committed_asyncapi_document_is_current() -> None:
    committed = json.loads((ROOT / "docs" / "asyncapi.json").read_text())
    assert committed == json.loads(json.dumps(build())), (
        "docs/asyncapi.json is stale: run `python -m segments_shared.asyncapi > docs/asyncapi.json`"
    )


def test_the_document_requires_every_field_an_event_carries() -> None:
    """Events are written whole (`event_json`), so every attribute and every data field is in
    every message: each schema requires all it declares (a field that may be null is still
    there, as null). tests/e2e/test_event_contract.py checks real messages against it."""
    schemas = build()["components"]["schemas"]
    optional = {
        name: sorted(set(schema.get("properties", {})) - set(schema.get("required", [])))
        for name, schema in schemas.items()
    }
    assert {name: keys for name, keys in optional.items() if keys} == {}
    envelope = schemas["SegmentCreated"]
    assert envelope["required"] == [
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "datacontenttype",
        "correlationid",
        "data",
    ]
    assert envelope["properties"]["subject"]["type"] == "string"
    assert {"type": "null"} in envelope["properties"]["correlationid"]["anyOf"]


def test_a_subject_is_required() -> None:
    with pytest.raises(ValidationError, match="subject"):
        CustomerChanged(source="x", data=CustomerIds(customer_external_ids=["c1"]))  # type: ignore[call-arg]


def test_every_event_type_is_documented_in_events_md() -> None:
    text = (ROOT / "docs" / "events.md").read_text()
    for event_type in EVENT_TYPES:
        assert f"`{event_type}`" in text, event_type


def test_every_bound_event_type_exists() -> None:
    for patterns in SERVICE_BINDINGS.values():
        assert set(patterns) <= set(EVENT_TYPES)


def test_events_round_trip_through_the_tagged_union() -> None:
    segment_id = uuid.uuid4()
    event = SegmentMembersChanged(
        source="segment-api",
        subject=str(segment_id),
        data=MembersChanged(segment_id=segment_id, added=3, removed=1, membership_version=7),
        correlationid="abc",
    )
    parsed = parse_event(json.dumps(event_json(event)))
    assert isinstance(parsed, SegmentMembersChanged)
    assert parsed.data.added == 3
    assert parsed.correlationid == "abc"
    assert event_json(event)["specversion"] == "1.0"


def test_unknown_types_and_oversized_id_lists_are_refused() -> None:
    with pytest.raises(ValidationError):
        parse_event(b'{"specversion": "1.0", "id": "1", "source": "x", "type": "nope", "data": {}}')
    with pytest.raises(ValidationError):
        CustomerChanged(
            source="x",
            subject="0",
            data=CustomerIds(customer_external_ids=[str(i) for i in range(1001)]),
        )

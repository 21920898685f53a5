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
            source="x", data=CustomerIds(customer_external_ids=[str(i) for i in range(1001)])
        )

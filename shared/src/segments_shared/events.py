"""Event contracts: CloudEvents 1.0 envelopes (docs/events.md#envelope-and-delivery) with
typed `data` (docs/events.md#types).

Contracts evolve additively: new optional fields only. A breaking change gets a new type name
(`segment.created.v2`) published beside the old one until every consumer has moved.
"""

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from segments_shared.observability import current_correlation_id

MAX_IDS_PER_EVENT = 1000

# An event is written whole (`event_json`, `model_dump_json`: no field left out, a missing
# value written as null), so every field is in every message, defaults included: the
# document's schemas (`mode="serialization"`, segments_shared/asyncapi.py) require them all,
# and a generated consumer gets no optional `id`, `type` or `time`.
ALWAYS_WRITTEN = ConfigDict(json_schema_serialization_defaults_required=True)


class EventData(BaseModel):
    model_config = ConfigDict(extra="allow", **ALWAYS_WRITTEN)


class SegmentRef(EventData):
    segment_id: uuid.UUID
    name: str
    version: int


class MembersChanged(EventData):
    """Counts of the whole change; who entered and left (customer external ids), at most
    1,000 each side per event: a larger change is several events, `part` 1 to `parts`, with
    the same counts and version, which together name everyone."""

    segment_id: uuid.UUID
    added: int
    removed: int
    membership_version: int
    cause: str | None = None
    added_ids: list[str] = Field(default_factory=list, max_length=MAX_IDS_PER_EVENT)
    removed_ids: list[str] = Field(default_factory=list, max_length=MAX_IDS_PER_EVENT)
    part: int = Field(default=1, ge=1)
    parts: int = Field(default=1, ge=1)


class CustomerIds(EventData):
    customer_external_ids: list[str] = Field(max_length=MAX_IDS_PER_EVENT)


class OrderRef(BaseModel):
    model_config = ALWAYS_WRITTEN

    order_external_id: str
    customer_external_id: str


class OrdersRecorded(EventData):
    orders: list[OrderRef] = Field(max_length=MAX_IDS_PER_EVENT)


class SyncRequested(EventData):
    sync_id: uuid.UUID
    segment_id: uuid.UUID
    destination_id: uuid.UUID
    kind: str = "sync"


class SyncCompleted(EventData):
    sync_id: uuid.UUID
    segment_id: uuid.UUID | None = None
    destination_id: uuid.UUID | None = None
    status: str
    stats: dict[str, int]
    # What asked for the run: `manual`, `change`, `schedule` or `promotion`; the
    # subscription whose run it is (None for manual runs and promotions).
    trigger: str = "manual"
    subscription_id: uuid.UUID | None = None


class Kpis(BaseModel):
    model_config = ALWAYS_WRITTEN

    customers: int
    reachable_customers: int
    total_revenue: str
    total_orders: int
    average_order_value: str | None
    customer_lifetime_value: str | None
    order_latency_days: float | None
    computed_at: datetime


class MetricsUpdated(EventData):
    segment_id: uuid.UUID
    metrics: Kpis


class CloudEvent(BaseModel):
    """The structured-mode envelope; `type` is also the routing key. `correlationid` is null
    when no request caused the event."""

    model_config = ConfigDict(extra="allow", **ALWAYS_WRITTEN)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    source: str
    type: str
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    # The segment id, or the (first) customer or order external id: every event has one.
    subject: str
    datacontenttype: Literal["application/json"] = "application/json"
    correlationid: str | None = Field(default_factory=current_correlation_id)
    data: Any


class SegmentCreated(CloudEvent):
    type: Literal["segment.created"] = "segment.created"
    data: SegmentRef


class SegmentUpdated(CloudEvent):
    type: Literal["segment.updated"] = "segment.updated"
    data: SegmentRef


class SegmentDeleted(CloudEvent):
    type: Literal["segment.deleted"] = "segment.deleted"
    data: SegmentRef


class SegmentActivated(CloudEvent):
    type: Literal["segment.activated"] = "segment.activated"
    data: SegmentRef


class SegmentDeactivated(CloudEvent):
    type: Literal["segment.deactivated"] = "segment.deactivated"
    data: SegmentRef


class SegmentMembersChanged(CloudEvent):
    type: Literal["segment.members_changed"] = "segment.members_changed"
    data: MembersChanged


class CustomerChanged(CloudEvent):
    type: Literal["customer.changed"] = "customer.changed"
    data: CustomerIds


class CustomerErased(CloudEvent):
    type: Literal["customer.erased"] = "customer.erased"
    data: CustomerIds


class OrderRecorded(CloudEvent):
    type: Literal["order.recorded"] = "order.recorded"
    data: OrdersRecorded


class SyncRequestedEvent(CloudEvent):
    type: Literal["sync.requested"] = "sync.requested"
    data: SyncRequested


class SyncCompletedEvent(CloudEvent):
    type: Literal["sync.completed"] = "sync.completed"
    data: SyncCompleted


class MetricsUpdatedEvent(CloudEvent):
    type: Literal["metrics.updated"] = "metrics.updated"
    data: MetricsUpdated


Event = Annotated[
    SegmentCreated
    | SegmentUpdated
    | SegmentDeleted
    | SegmentActivated
    | SegmentDeactivated
    | SegmentMembersChanged
    | CustomerChanged
    | CustomerErased
    | OrderRecorded
    | SyncRequestedEvent
    | SyncCompletedEvent
    | MetricsUpdatedEvent,
    Field(discriminator="type"),
]

EVENT_TYPES: tuple[str, ...] = (
    "segment.created",
    "segment.updated",
    "segment.deleted",
    "segment.activated",
    "segment.deactivated",
    "segment.members_changed",
    "customer.changed",
    "customer.erased",
    "order.recorded",
    "sync.requested",
    "sync.completed",
    "metrics.updated",
)

_event_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(body: bytes | str) -> Event:
    """Parse a CloudEvent of a known type; raises pydantic.ValidationError otherwise."""
    return _event_adapter.validate_json(body)


def event_json(event: CloudEvent) -> dict[str, Any]:
    """The event as a JSON-ready dict, for the outbox."""
    return event.model_dump(mode="json", exclude_none=False)

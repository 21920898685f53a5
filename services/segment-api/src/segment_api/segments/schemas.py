import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator

from segment_api.fields import (
    Email,
    ExternalId,
    Name,
    RequestModel,
    Text,
    refuse_null,
    with_examples,
)

MAX_BATCH = 10_000


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


SegmentName = Annotated[Name, AfterValidator(_not_blank)]
Description = Annotated[Text, Field(max_length=2000)]


class ManualDefinition(RequestModel):
    type: Literal["manual"] = "manual"


Definition = ManualDefinition


class SegmentCreate(RequestModel):
    name: SegmentName
    description: Description | None = None
    kind: Literal["user", "custom"] = Field(
        "user", description="`custom` (made to a client's specification) needs the admin scope"
    )
    definition: Definition = Field(default_factory=ManualDefinition)

    model_config = with_examples({"name": "VIP customers", "description": "Hand-picked top buyers"})


class SegmentMetrics(BaseModel):
    """Lifetime KPIs (SPEC section 7); every figure is null before the first computation."""

    customers: int | None = None
    reachable_customers: int | None = None
    total_revenue: str | None = Field(None, examples=["1234.50"])
    total_orders: int | None = None
    average_order_value: str | None = None
    customer_lifetime_value: str | None = None
    order_latency_days: float | None = None
    computed_at: datetime | None = None
    stale: bool = True


class Delivery(BaseModel):
    destination_id: uuid.UUID
    state: Literal["queued", "syncing", "synced", "failed"]
    last_synced_at: datetime | None


class Segment(BaseModel):
    id: uuid.UUID
    name: str
    description: str | None
    kind: Literal["default", "user", "custom"]
    definition: dict[str, Any]
    active: bool
    status: Literal["ready", "building", "inactive"]
    member_count: int
    metrics: SegmentMetrics
    delivery: list[Delivery]
    version: int
    created_at: datetime
    updated_at: datetime


class MembersRequest(RequestModel):
    """Exactly one of `external_ids` or `emails`, at most 10,000 items."""

    external_ids: Annotated[list[ExternalId], Field(min_length=1, max_length=MAX_BATCH)] | None = (
        None
    )
    emails: Annotated[list[Email], Field(min_length=1, max_length=MAX_BATCH)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "MembersRequest":
        if (self.external_ids is None) == (self.emails is None):
            raise ValueError("give exactly one of external_ids or emails")
        return self

    model_config = with_examples({"external_ids": ["c-1001", "c-1002"]})


class MembersAdded(BaseModel):
    added: int
    already_members: int
    not_found: list[str]


class MembersRemoved(BaseModel):
    removed: int
    not_members: int
    not_found: list[str]


class Member(BaseModel):
    external_id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    email_status: str
    added_at: datetime


class SegmentUpdate(RequestModel):
    """Only the fields given change; each change bumps `version`."""

    name: SegmentName | None = None
    description: Description | None = None
    definition: Definition | None = None
    kind: Literal["user", "custom"] | None = Field(
        None, description="`custom` needs the admin scope"
    )

    _not_null = field_validator("name", "definition", "kind", mode="before")(refuse_null)

    model_config = with_examples(
        {"name": "VIP customers (EU)", "description": "EU only"},
        not_null=("name", "definition", "kind"),
    )


class DuplicateRequest(RequestModel):
    name: SegmentName | None = Field(
        None, description='Defaults to "<name> (copy)", then "(copy 2)", ...'
    )


class HistoryEntry(BaseModel):
    membership_version: int
    entered: int
    exited: int
    member_count: int = Field(description="Members after the change")
    cause: str = Field(examples=["members_added", "members_removed", "customer_erased"])
    correlation_id: str | None
    occurred_at: datetime

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    GetJsonSchemaHandler,
    StrictInt,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from segment_api.fields import (
    Email,
    ExternalId,
    Name,
    RequestModel,
    Text,
    refuse_null,
    with_examples,
)
from segment_api.openapi import PublishedAs, schema_of
from segment_api.rules.definition import OrderBy
from segment_api.rules.grammar import DEFINITION_SHAPES

MAX_BATCH = 10_000


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


SegmentName = Annotated[Name, AfterValidator(_not_blank)]
SEGMENT_DEFINITION_DESCRIPTION = (
    '`{"type": "manual"}` (the default when `type` is left out), or `{"type": "rule", '
    '"rule": {...}}` with an optional size limit (`max_size`, `order_by`).'
)
Description = Annotated[Text, Field(max_length=2000)]


class SegmentDefinition(RequestModel):
    """`{"type": "manual"}`, or `{"type": "rule", "rule": {...}}` with an optional size limit
    (`max_size`, `order_by`). The rule is validated when saved; docs/rules.md."""

    type: Literal["manual", "rule"] = "manual"
    rule: dict[str, Any] | None = None
    max_size: StrictInt | None = Field(
        None, ge=1, le=1_000_000_000, description="At most this many members (rule segments)"
    )
    order_by: OrderBy | None = Field(
        None,
        description="Which members a size limit keeps (default random, stable per segment)",
    )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Published as the tagged union of the two shapes, the rule grammar included (the
        rule is a dict here: the parser reads it, and its 422 names each offending node)."""
        return {
            **schema_of(DEFINITION_SHAPES, handler),
            "title": cls.__name__,
            "description": SEGMENT_DEFINITION_DESCRIPTION,
        }

    def stored(self) -> dict[str, Any]:
        """The definition as saved: absent fields left out, a size limit's order spelled out."""
        stored = self.model_dump(exclude_none=True)
        if self.type == "rule" and self.max_size is not None and self.order_by is None:
            stored["order_by"] = "random"
        return stored


class SegmentCreate(RequestModel):
    name: SegmentName
    description: Description | None = None
    kind: Literal["user", "custom"] = Field(
        "user", description="`custom` (made to a client's specification) needs the admin scope"
    )
    definition: SegmentDefinition = Field(default_factory=SegmentDefinition)

    model_config = with_examples({"name": "VIP customers", "description": "Hand-picked top buyers"})


class SegmentMetrics(BaseModel):
    """Lifetime KPIs (docs/contract.md#kpis); every figure is null before the first
    computation."""

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
    # As stored: a valid definition (answered as saved, docs/rules.md#definitions).
    definition: Annotated[dict[str, Any], PublishedAs(SegmentDefinition)]
    active: bool
    status: Literal["ready", "building", "inactive"]
    member_count: int
    metrics: SegmentMetrics
    delivery: list[Delivery]
    version: int
    created_at: datetime
    updated_at: datetime


ExternalIds = Annotated[list[ExternalId], Field(min_length=1, max_length=MAX_BATCH)]
Emails = Annotated[list[Email], Field(min_length=1, max_length=MAX_BATCH)]


class MembersByExternalId(RequestModel):
    """Customers by the store's own ids, at most 10,000."""

    external_ids: ExternalIds
    emails: None = None


class MembersByEmail(RequestModel):
    """Customers by email, matched case-insensitively (every customer with the address), at
    most 10,000."""

    emails: Emails
    external_ids: None = None


class MembersRequest(RequestModel):
    """Exactly one of `external_ids` or `emails`, at most 10,000 items. Published as the
    union of MembersByExternalId and MembersByEmail."""

    external_ids: ExternalIds | None = None
    emails: Emails | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "MembersRequest":
        if (self.external_ids is None) == (self.emails is None):
            raise ValueError("give exactly one of external_ids or emails")
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        shapes = schema_of(MembersByExternalId | MembersByEmail, handler)
        return {
            "title": cls.__name__,
            "description": "Exactly one of `external_ids` or `emails`, at most 10,000 items.",
            "oneOf": shapes["anyOf"],
            "examples": [{"external_ids": ["c-1001", "c-1002"]}, {"emails": ["ada@example.com"]}],
        }


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
    definition: SegmentDefinition | None = None
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

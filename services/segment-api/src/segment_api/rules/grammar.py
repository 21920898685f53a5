"""A segment's definition and the rule grammar as the OpenAPI document publishes them
(docs/rules.md#the-rule-language), for code generators and for clients that validate before
sending. These models validate nothing: a definition is read by definition.py and parse.py,
whose 422 names each offending node. They describe what the parser accepts, no less (a test
holds the two together; a segment id is a UUID in its usual spelling, with hyphens), and as
much more as JSON Schema can say: field names, operators, value types, list and text sizes;
not which operator fits which field, nor the limits of depth and conditions."""

import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictInt, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from segment_api.fields import ATTRIBUTE_KEY_PATTERN
from segment_api.rules.catalogue import ADDRESS_PARTS, ALL_OPERATORS, FIELDS
from segment_api.rules.definition import OrderBy
from segment_api.rules.parse import MAX_LIST, MAX_TEXT


def _field_pattern() -> str:
    fixed = "|".join(re.escape(name) for name in FIELDS)
    key = ATTRIBUTE_KEY_PATTERN.removeprefix("^").removesuffix("$")
    parts = "|".join(ADDRESS_PARTS)
    return f"^(?:{fixed}|attributes\\.{key}|(?:shipping|billing)_address\\.(?:{parts}))$"


FIELD_PATTERN = _field_pattern()
RULE_EXAMPLE: dict[str, Any] = {
    "all": [
        {"field": "email_status", "op": "eq", "value": "subscribed"},
        {"field": "attributes.tier", "op": "in", "value": ["gold", "platinum"]},
        {"field": "total_revenue", "op": "gte", "value": 250},
        {"field": "last_order_at", "op": "within_last_days", "value": 90},
    ]
}
_SCALAR: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "maxLength": MAX_TEXT, "pattern": "^[^\\u0000]*$"},
        {"type": "number"},
        {"type": "boolean"},
    ]
}
_VALUE: dict[str, Any] = {
    "description": "A string, a number or a boolean as the field's type asks; for `in` and "
    "`not_in` a list of them, for `between` `[low, high]`, for `within_last_days` and "
    "`before_last_days` a number of days. `exists` and `not_exists` take none.",
    "anyOf": [
        *_SCALAR["anyOf"],
        {"type": "array", "items": _SCALAR, "minItems": 1, "maxItems": MAX_LIST},
    ],
}


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class AllNode(_Node):
    """Every child holds."""

    all: list["RuleNode"] = Field(min_length=1)


class AnyNode(_Node):
    """Some child holds."""

    any: list["RuleNode"] = Field(min_length=1)


class NotNode(_Node):
    """The child does not hold."""

    not_: "RuleNode" = Field(alias="not")


class FieldCondition(_Node):
    """A customer's field compared with a value (docs/rules.md#fields and #operators)."""

    field: str = Field(
        pattern=FIELD_PATTERN,
        description="A customer field, `attributes.<key>`, `shipping_address.<part>`, "
        "`billing_address.<part>`, or a figure of the customer's placed orders or RFM scores",
        examples=["total_revenue", "attributes.tier"],
    )
    op: Annotated[str, WithJsonSchema({"type": "string", "enum": sorted(ALL_OPERATORS)})]
    # Left out, never null: only `exists` and `not_exists` take no value.
    value: Annotated[Any, WithJsonSchema(_VALUE)] | SkipJsonSchema[None] = Field(
        None, json_schema_extra=_no_default
    )


class SegmentCondition(_Node):
    """Whether the customer is a member of another segment (no cycles)."""

    segment: uuid.UUID
    op: Literal["member", "not_member"]


def _one_of(schema: dict[str, Any]) -> None:
    """The node shapes exclude each other (each requires its own key and takes no other's)."""
    schema["oneOf"] = schema.pop("anyOf")


class RuleNode(RootModel[AllNode | AnyNode | NotNode | FieldCondition | SegmentCondition]):
    """A rule tree: `all`, `any` and `not` nest other nodes, at most 10 levels deep; field and
    segment conditions are its leaves, at most 100 of them. A 422 names each offending node
    by its JSON pointer."""

    model_config = ConfigDict(json_schema_extra=_one_of)


class ManualDefinition(BaseModel):
    """Members are added and removed by hand."""

    type: Literal["manual"] = "manual"
    # A rule definition's fields, taken as left out when null.
    rule: None = None
    max_size: None = None
    order_by: None = None

    model_config = ConfigDict(extra="forbid")


class RuleDefinition(BaseModel):
    """Members are the customers the rule selects, at most `max_size` of them."""

    type: Literal["rule"]
    rule: RuleNode
    max_size: StrictInt | None = Field(
        None, ge=1, le=1_000_000_000, description="At most this many members"
    )
    order_by: OrderBy | None = Field(
        None,
        description="Which members a size limit keeps (only with `max_size`; default random, "
        "stable per segment)",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"type": "rule", "rule": RULE_EXAMPLE},
                {
                    "type": "rule",
                    "rule": RULE_EXAMPLE,
                    "max_size": 5000,
                    "order_by": "total_revenue_desc",
                },
            ]
        },
    )


# A segment's definition: tagged by `type`, which a manual definition may leave out (it is the
# default), so Redocly warns that the discriminator may find no tag. Requiring it would
# publish a contract stricter than the API, which has always taken `{}` as manual.
DEFINITION_SHAPES = Annotated[ManualDefinition | RuleDefinition, Field(discriminator="type")]

from typing import Any

from pydantic import BaseModel, Field

from segment_api.fields import RequestModel, with_examples

RULE_DESCRIPTION = (
    'A rule tree: {"all": [node, ...]}, {"any": [node, ...]}, {"not": node}, '
    '{"field": F, "op": OP, "value": V} or {"segment": "<segment id>", "op": "member" | '
    '"not_member"}. At most 100 conditions, 10 levels deep. Fields, operators and their '
    "types: docs/rules.md. A 422 names each offending node by its JSON pointer."
)
RULE_EXAMPLE: dict[str, Any] = {
    "all": [
        {"field": "email_status", "op": "eq", "value": "subscribed"},
        {"field": "attributes.tier", "op": "in", "value": ["gold", "platinum"]},
        {"field": "total_revenue", "op": "gte", "value": 250},
        {"field": "last_order_at", "op": "within_last_days", "value": 90},
    ]
}


class PreviewRequest(RequestModel):
    rule: dict[str, Any] = Field(description=RULE_DESCRIPTION)

    model_config = with_examples({"rule": RULE_EXAMPLE})


class ConditionCount(BaseModel):
    pointer: str = Field(
        description="JSON pointer of the condition in the request body", examples=["/rule/all/0"]
    )
    count: int = Field(description="Customers satisfying this condition alone")


class SampleMember(BaseModel):
    external_id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    email_status: str


class Preview(BaseModel):
    size: int = Field(description="Customers the rule selects now")
    conditions: list[ConditionCount] = Field(
        description="Each condition (field or segment) in document order, with the number of "
        "customers it selects on its own, ignoring the rest of the rule"
    )
    sample: list[SampleMember] = Field(
        description="Up to 20 of the selected customers, the longest-standing first"
    )

from typing import Annotated, Any

from pydantic import BaseModel, Field

from segment_api.fields import RequestModel, with_examples
from segment_api.openapi import PublishedAs
from segment_api.rules.grammar import RULE_EXAMPLE, RuleNode


class PreviewRequest(RequestModel):
    # Read by the rule parser, whose 422 names each offending node by its JSON pointer.
    rule: Annotated[dict[str, Any], PublishedAs(RuleNode)]

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

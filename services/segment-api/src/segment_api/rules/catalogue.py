"""The fields a rule can test (docs/rules.md#fields), their types and the operators each type
takes."""

import enum
import re
from dataclasses import dataclass

from segment_api.fields import ATTRIBUTE_KEY_PATTERN
from segments_shared.db.models.customers import EMAIL_STATUSES


class Kind(enum.Enum):
    STRING = "string"
    ENUM = "enum"
    TIMESTAMP = "timestamp"
    NUMBER = "number"
    SCORE = "rfm score"  # rfm.score: three digits 1-5, compared as text
    ATTRIBUTE = "attribute"  # compared by the JSON type of the rule's value


class Source(enum.Enum):
    """Where a field's value comes from, which decides the joins a rule needs."""

    CUSTOMER = "customer"
    ORDERS = "orders"
    RFM = "rfm"


@dataclass(frozen=True)
class FieldSpec:
    name: str  # as written in rules; attributes and addresses carry their key in `key`
    kind: Kind
    source: Source
    key: str | None = None


COMPARISONS = ("lt", "lte", "gt", "gte", "between")
PRESENCE = ("exists", "not_exists")
# The operators of strings, and of attributes (a JSON value is often a string).
TEXT_OPERATORS = ("eq", "ne", "in", "not_in", *COMPARISONS, "contains", "starts_with", *PRESENCE)
OPERATORS: dict[Kind, tuple[str, ...]] = {
    Kind.STRING: TEXT_OPERATORS,
    Kind.ENUM: ("eq", "ne", "in", "not_in"),
    Kind.TIMESTAMP: (
        "eq",
        "ne",
        *COMPARISONS,
        "within_last_days",
        "before_last_days",
        *PRESENCE,
    ),
    Kind.NUMBER: ("eq", "ne", "in", "not_in", *COMPARISONS, *PRESENCE),
    Kind.SCORE: ("eq", "ne", "in", "not_in", "starts_with", *PRESENCE),
    Kind.ATTRIBUTE: TEXT_OPERATORS,
}
ALL_OPERATORS = frozenset(op for ops in OPERATORS.values() for op in ops)
RELATIVE_DATE_OPERATORS = ("within_last_days", "before_last_days")

ENUM_VALUES = {"email_status": EMAIL_STATUSES}
ADDRESS_PARTS = ("line1", "line2", "city", "region", "postal_code", "country")

FIELDS: dict[str, FieldSpec] = {
    spec.name: spec
    for spec in (
        FieldSpec("email", Kind.STRING, Source.CUSTOMER),
        FieldSpec("email_status", Kind.ENUM, Source.CUSTOMER),
        FieldSpec("first_name", Kind.STRING, Source.CUSTOMER),
        FieldSpec("last_name", Kind.STRING, Source.CUSTOMER),
        FieldSpec("created_at", Kind.TIMESTAMP, Source.CUSTOMER),
        FieldSpec("orders_count", Kind.NUMBER, Source.ORDERS),
        FieldSpec("total_revenue", Kind.NUMBER, Source.ORDERS),
        FieldSpec("average_order_value", Kind.NUMBER, Source.ORDERS),
        FieldSpec("first_order_at", Kind.TIMESTAMP, Source.ORDERS),
        FieldSpec("last_order_at", Kind.TIMESTAMP, Source.ORDERS),
        FieldSpec("days_since_last_order", Kind.NUMBER, Source.ORDERS),
        FieldSpec("rfm.recency", Kind.NUMBER, Source.RFM),
        FieldSpec("rfm.frequency", Kind.NUMBER, Source.RFM),
        FieldSpec("rfm.monetary", Kind.NUMBER, Source.RFM),
        FieldSpec("rfm.score", Kind.SCORE, Source.RFM),
    )
}
# Fields whose truth changes as time passes, without any data changing.
TIME_RELATIVE_FIELDS = ("days_since_last_order",)

_ATTRIBUTE_KEY = re.compile(ATTRIBUTE_KEY_PATTERN)


def lookup(name: str) -> FieldSpec | str:
    """The field named `name`, or why there is none."""
    if name in FIELDS:
        return FIELDS[name]
    prefix, dot, key = name.partition(".")
    if dot and prefix == "attributes":
        if _ATTRIBUTE_KEY.match(key):
            return FieldSpec("attributes", Kind.ATTRIBUTE, Source.CUSTOMER, key)
        return "attribute keys are 1 to 64 letters, digits, '_' or '-', not starting with '-'"
    if dot and prefix in ("shipping_address", "billing_address"):
        if key in ADDRESS_PARTS:
            return FieldSpec(prefix, Kind.STRING, Source.CUSTOMER, key)
        return f"an address part is one of {', '.join(ADDRESS_PARTS)}"
    known = ", ".join([*FIELDS, "attributes.<key>", "shipping_address.<part>"])
    return f"unknown field; the fields are {known} and billing_address.<part>"

"""A plain Python evaluation of rules, written from docs/rules.md and independent of the
compiler, to check the SQL against."""

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any


@dataclass
class Person:
    """A customer as the rules see it."""

    id: int
    external_id: str
    email: str | None
    email_status: str
    first_name: str | None
    last_name: str | None
    created_at: datetime
    attributes: dict[str, Any]
    shipping_address: dict[str, str] | None
    billing_address: dict[str, str] | None
    orders: list[tuple[Decimal, datetime, str]] = field(default_factory=list)  # placed or not
    rfm: tuple[int, int, int] | None = None
    segments: set[str] = field(default_factory=set)

    def placed(self) -> list[tuple[Decimal, datetime]]:
        return [(total, at) for total, at, status in self.orders if status == "placed"]

    def value(self, name: str, now: datetime) -> Any:
        placed = self.placed()
        if name in ("email", "email_status", "first_name", "last_name", "created_at"):
            return getattr(self, name)
        prefix, _, part = name.partition(".")
        if prefix in ("shipping_address", "billing_address"):
            address = getattr(self, prefix)
            return None if address is None else address.get(part)
        if name == "orders_count":
            return Decimal(len(placed))
        if name == "total_revenue":
            return sum((total for total, _ in placed), Decimal(0))
        if name == "average_order_value":
            if not placed:
                return None
            average = sum((total for total, _ in placed), Decimal(0)) / len(placed)
            return average.quantize(Decimal("0.01"), ROUND_HALF_UP)
        if name == "first_order_at":
            return min((at for _, at in placed), default=None)
        if name == "last_order_at":
            return max((at for _, at in placed), default=None)
        if name == "days_since_last_order":
            if not placed:
                return None
            seconds = (now - max(at for _, at in placed)).total_seconds()
            return Decimal(math.floor(seconds / 86400))
        if prefix == "rfm":
            if self.rfm is None:
                return None
            if part == "score":
                return "".join(str(score) for score in self.rfm)
            return Decimal(self.rfm[("recency", "frequency", "monetary").index(part)])
        raise AssertionError(name)


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    return Decimal(str(value)) if isinstance(value, float) else Decimal(value)


def _same_json(stored: Any, wanted: Any) -> bool:
    """JSON equality: booleans only equal booleans, numbers compare by value."""
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return isinstance(stored, bool) and isinstance(wanted, bool) and stored == wanted
    if _number(stored) is not None and _number(wanted) is not None:
        return _number(stored) == _number(wanted)
    return isinstance(stored, str) and isinstance(wanted, str) and stored == wanted


def _ordered(actual: Any, op: str, value: Any) -> bool:
    if op == "between":
        low, high = value
        return bool(low <= actual <= high)
    return bool(
        {
            "lt": actual < value,
            "lte": actual <= value,
            "gt": actual > value,
            "gte": actual >= value,
        }[op]
    )


def _as(value: Any, kind: str) -> Any:
    if kind == "number":
        return _number(value)
    if kind == "timestamp":
        return datetime.fromisoformat(value)
    return value


KINDS = {
    "email_status": "enum",
    "created_at": "timestamp",
    "first_order_at": "timestamp",
    "last_order_at": "timestamp",
    "orders_count": "number",
    "total_revenue": "number",
    "average_order_value": "number",
    "days_since_last_order": "number",
    "rfm.recency": "number",
    "rfm.frequency": "number",
    "rfm.monetary": "number",
}


def condition(person: Person, node: dict[str, Any], now: datetime) -> bool:
    name, op = node["field"], node["op"]
    value: Any = node.get("value")
    if op in ("ne", "not_in", "not_exists"):
        positive = {"ne": "eq", "not_in": "in", "not_exists": "exists"}[op]
        return not condition(person, {**node, "op": positive}, now)
    if name.startswith("attributes."):
        return _attribute(person.attributes.get(name.removeprefix("attributes.")), op, value)
    actual = person.value(name, now)
    if op == "exists":
        return actual is not None
    if actual is None:
        return False
    kind = KINDS.get(name, "string")
    if name == "email" and value is not None:
        value = [item.lower() for item in value] if isinstance(value, list) else value.lower()
    if op in ("within_last_days", "before_last_days"):
        since = now - timedelta(days=float(value))
        return bool(actual >= since) if op == "within_last_days" else bool(actual < since)
    if op in ("contains", "starts_with"):
        text, part = actual.lower(), value.lower()
        return part in text if op == "contains" else text.startswith(part)
    if op == "eq":
        return bool(actual == _as(value, kind))
    if op == "in":
        return any(actual == _as(item, kind) for item in value)
    if op == "between":
        return _ordered(actual, op, [_as(item, kind) for item in value])
    return _ordered(actual, op, _as(value, kind))


def _attribute(stored: Any, op: str, value: Any) -> bool:
    if op == "exists":
        return stored is not None
    if stored is None:
        return False
    if op == "eq":
        return _same_json(stored, value)
    if op == "in":
        return any(_same_json(stored, item) for item in value)
    sample = value[0] if isinstance(value, list) else value
    if op in ("contains", "starts_with"):
        if not isinstance(stored, str):
            return False
        text, part = stored.lower(), value.lower()
        return part in text if op == "contains" else text.startswith(part)
    if _number(sample) is not None:
        number = _number(stored)
        if number is None:
            return False
        bounds = [_number(item) for item in value] if op == "between" else _number(value)
        return _ordered(number, op, bounds)
    if not isinstance(stored, str):
        return False
    return _ordered(stored, op, value)


def evaluate(person: Person, node: dict[str, Any], now: datetime) -> bool:
    if "all" in node:
        return all(evaluate(person, child, now) for child in node["all"])
    if "any" in node:
        return any(evaluate(person, child, now) for child in node["any"])
    if "not" in node:
        return not evaluate(person, node["not"], now)
    if "segment" in node:
        inside = node["segment"] in person.segments
        return inside if node["op"] == "member" else not inside
    return condition(person, node, now)

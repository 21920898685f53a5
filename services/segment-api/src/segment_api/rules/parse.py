"""Rule validation: JSON in, a tree of nodes out, or every problem with the JSON pointer of
the node or value at fault (a 422 names each: docs/rules.md#validation)."""

import math
import re
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from pydantic import AwareDatetime, TypeAdapter, ValidationError

from segment_api.fields import TIMESTAMP_PROBLEM, in_utc_range, looks_like_timestamp
from segment_api.rules.catalogue import (
    ALL_OPERATORS,
    ENUM_VALUES,
    OPERATORS,
    PRESENCE,
    RELATIVE_DATE_OPERATORS,
    FieldSpec,
    Kind,
    Source,
    lookup,
)
from segment_api.rules.nodes import AllOf, AnyOf, Condition, Membership, Node, Not, Scalar, Value

MAX_CONDITIONS = 100
MAX_DEPTH = 10
MAX_LIST = 1000
MAX_TEXT = 1000
MAX_NUMBER = Decimal(10**15)
MAX_DAYS = Decimal(36_500)
MAX_ERRORS = 50

SHAPES = ("all", "any", "not", "field", "segment")
_SHAPE_HELP = (
    'a node is {"all": [...]}, {"any": [...]}, {"not": {...}}, '
    '{"field": ..., "op": ..., "value": ...} or {"segment": "<id>", "op": "member"}'
)
_SCORE = re.compile(r"^[1-5]{3}$")
_SCORE_PREFIX = re.compile(r"^[1-5]{1,3}$")
_TIMESTAMP = TypeAdapter(AwareDatetime)
_ATTRIBUTE_TEXT = FieldSpec("attributes", Kind.ATTRIBUTE, Source.CUSTOMER)


class RuleInvalid(Exception):
    """A rule that cannot be saved; `errors` holds one {pointer, detail} per problem."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['pointer']}: {e['detail']}" for e in errors[:5]))
        self.errors = errors


def escape(part: str | int) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


class _Skip(Exception):
    """Raised after an error that makes the rest of a node meaningless."""


@dataclass
class _Parser:
    errors: list[dict[str, str]] = field(default_factory=list)
    conditions: int = 0

    def error(self, pointer: str, detail: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"pointer": pointer, "detail": detail})

    def node(self, raw: object, pointer: str, depth: int) -> Node | None:
        if depth > MAX_DEPTH:
            self.error(pointer, f"rules nest at most {MAX_DEPTH} levels deep")
            return None
        if not isinstance(raw, dict):
            self.error(pointer, f"must be an object: {_SHAPE_HELP}")
            return None
        shapes = [shape for shape in SHAPES if shape in raw]
        if not shapes:
            self.error(pointer, f"unknown node: {_SHAPE_HELP}")
            return None
        if len(shapes) > 1:
            self.error(
                pointer,
                "a node has exactly one of all, any, not, field or segment, "
                f"not {' and '.join(shapes)}",
            )
            return None
        try:
            if shapes[0] in ("all", "any"):
                return self.group(raw, shapes[0], pointer, depth)
            if shapes[0] == "not":
                self.only_keys(raw, ("not",), pointer)
                child = self.node(raw["not"], f"{pointer}/not", depth + 1)
                return None if child is None else Not(child, pointer)
            self.conditions += 1
            if self.conditions == MAX_CONDITIONS + 1:
                self.error(pointer, f"a rule holds at most {MAX_CONDITIONS} conditions")
            if shapes[0] == "segment":
                return self.membership(raw, pointer)
            return self.condition(raw, pointer)
        except _Skip:
            return None

    def only_keys(self, raw: dict[str, Any], allowed: tuple[str, ...], pointer: str) -> None:
        for key in raw:
            if key not in allowed:
                self.error(
                    f"{pointer}/{escape(key)}", f"unknown key; this node takes {', '.join(allowed)}"
                )

    def group(self, raw: dict[str, Any], shape: str, pointer: str, depth: int) -> Node | None:
        self.only_keys(raw, (shape,), pointer)
        items = raw[shape]
        if not isinstance(items, list):
            self.error(f"{pointer}/{shape}", "must be a list of nodes")
            return None
        if not items:
            self.error(f"{pointer}/{shape}", "must hold at least one node")
            return None
        children = [
            self.node(item, f"{pointer}/{shape}/{index}", depth + 1)
            for index, item in enumerate(items)
        ]
        if any(child is None for child in children):
            return None
        kept = tuple(child for child in children if child is not None)
        return AllOf(kept, pointer) if shape == "all" else AnyOf(kept, pointer)

    def membership(self, raw: dict[str, Any], pointer: str) -> Membership:
        self.only_keys(raw, ("segment", "op"), pointer)
        segment = raw["segment"]
        segment_id = None
        if isinstance(segment, str):
            try:
                segment_id = uuid.UUID(segment)
            except ValueError:
                pass
        if segment_id is None:
            self.error(f"{pointer}/segment", "must be a segment id (a UUID)")
        op = raw.get("op")
        if "op" not in raw:
            self.error(f"{pointer}/op", "required: member or not_member")
        elif op not in ("member", "not_member"):
            self.error(f"{pointer}/op", "a segment condition's op is member or not_member")
        if segment_id is None or op not in ("member", "not_member"):
            raise _Skip
        return Membership(segment_id, op == "member", pointer)

    def condition(self, raw: dict[str, Any], pointer: str) -> Condition:
        self.only_keys(raw, ("field", "op", "value"), pointer)
        name = raw["field"]
        spec: FieldSpec | None = None
        if not isinstance(name, str):
            self.error(f"{pointer}/field", "must be a string naming a field")
        else:
            found = lookup(name)
            if isinstance(found, str):
                self.error(f"{pointer}/field", found)
            else:
                spec = found
        op = raw.get("op")
        if "op" not in raw:
            self.error(f"{pointer}/op", "required")
            raise _Skip
        if not isinstance(op, str) or op not in ALL_OPERATORS:
            self.error(
                f"{pointer}/op",
                f"unknown operator; operators are {', '.join(sorted(ALL_OPERATORS))}",
            )
            raise _Skip
        if spec is None:
            raise _Skip
        if op not in OPERATORS[spec.kind]:
            self.error(
                f"{pointer}/op",
                f"{op} does not apply to {name} ({_describe(spec)}); "
                f"use one of {', '.join(OPERATORS[spec.kind])}",
            )
            raise _Skip
        return Condition(spec, op, self.value(spec, op, raw, pointer), pointer)

    def value(self, spec: FieldSpec, op: str, raw: dict[str, Any], pointer: str) -> Value:
        here = f"{pointer}/value"
        if op in PRESENCE:
            if "value" in raw:
                self.error(here, f"{op} takes no value")
            return None
        if "value" not in raw:
            self.error(here, f"required by {op}")
            raise _Skip
        value = raw["value"]
        if op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                self.error(here, f"{op} takes a non-empty list of values")
                raise _Skip
            if len(value) > MAX_LIST:
                self.error(here, f"{op} takes at most {MAX_LIST} values")
                raise _Skip
            return tuple(
                self.scalar(spec, op, item, f"{here}/{index}") for index, item in enumerate(value)
            )
        if op == "between":
            if not isinstance(value, list) or len(value) != 2:
                self.error(here, "between takes [low, high]")
                raise _Skip
            low = self.scalar(spec, op, value[0], f"{here}/0")
            high = self.scalar(spec, op, value[1], f"{here}/1")
            if type(low) is not type(high):
                self.error(here, "low and high must be of the same type")
                raise _Skip
            if low > high:  # type: ignore[operator]
                self.error(here, "low is above high, so nothing would match")
                raise _Skip
            return (low, high)
        if op in RELATIVE_DATE_OPERATORS:
            days = _number(value)
            if days is None or not 0 < days <= MAX_DAYS:
                self.error(here, f"{op} takes a number of days above 0, at most {MAX_DAYS}")
                raise _Skip
            return timedelta(days=float(days))
        return self.scalar(spec, op, value, here)

    def scalar(self, spec: FieldSpec, op: str, value: object, pointer: str) -> Scalar:
        """One value of the field's type; raises _Skip (after an error) otherwise."""
        problem = None
        if spec.kind is Kind.ATTRIBUTE:
            result, problem = _attribute_value(op, value)
        elif op in ("contains", "starts_with") or spec.kind in (Kind.STRING, Kind.ENUM, Kind.SCORE):
            result, problem = _text_value(spec, op, value)
        elif spec.kind is Kind.NUMBER:
            result = _number(value)
            problem = (
                f"must be a number of magnitude at most {MAX_NUMBER}" if result is None else None
            )
        else:
            result, problem = _timestamp(value)
        if problem is not None or result is None:
            self.error(pointer, problem or "invalid value")
            raise _Skip
        return result


def _describe(spec: FieldSpec) -> str:
    return "an attribute" if spec.kind is Kind.ATTRIBUTE else f"a {spec.kind.value}"


def _number(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    return number if abs(number) <= MAX_NUMBER else None


def _text(value: object) -> tuple[str | None, str | None]:
    if not isinstance(value, str):
        return None, "must be a string"
    if "\x00" in value:
        return None, "must not contain NUL characters"
    if len(value) > MAX_TEXT:
        return None, f"must be at most {MAX_TEXT} characters"
    return value, None


def _text_value(spec: FieldSpec, op: str, value: object) -> tuple[Scalar | None, str | None]:
    text, problem = _text(value)
    if text is None:
        return None, problem
    if op in ("contains", "starts_with") and spec.kind is not Kind.SCORE and not text:
        return None, f"{op} takes a non-empty string"
    if spec.kind is Kind.ENUM:
        allowed = ENUM_VALUES[spec.name]
        if text not in allowed:
            return None, f"must be one of {', '.join(allowed)}"
    if spec.kind is Kind.SCORE:
        pattern = _SCORE_PREFIX if op == "starts_with" else _SCORE
        if not pattern.match(text):
            return None, 'an RFM score is three digits 1 to 5, such as "545"' + (
                " (or its first one or two)" if op == "starts_with" else ""
            )
    # Emails are stored lower-cased and matched case-insensitively
    # (docs/contract.md#customers-and-orders).
    return (text.lower() if spec.name == "email" else text), None


def _timestamp(value: object) -> tuple[Scalar | None, str | None]:
    if not looks_like_timestamp(value):
        return None, TIMESTAMP_PROBLEM
    try:
        stamp = _TIMESTAMP.validate_python(value)
    except ValidationError:
        return None, TIMESTAMP_PROBLEM
    try:
        return in_utc_range(stamp), None
    except ValueError as exc:
        return None, str(exc)


def _attribute_value(op: str, value: object) -> tuple[Scalar | None, str | None]:
    """Attributes compare by the JSON type of the rule's value."""
    if isinstance(value, bool):
        if op in ("eq", "ne", "in", "not_in"):
            return value, None
        return None, f"{op} does not compare booleans; use eq, ne, in or not_in"
    if op in ("contains", "starts_with"):
        return _text_value(_ATTRIBUTE_TEXT, op, value)
    if isinstance(value, int | float):
        number = _number(value)
        return (
            (number, None)
            if number is not None
            else (None, "must be a finite number of magnitude at most 1e15")
        )
    if isinstance(value, str):
        return _text(value)
    return None, "an attribute value is a string, a number or a boolean"


def parse_rule(raw: object, pointer: str) -> Node:
    """The validated rule at `pointer` of the request body; raises RuleInvalid."""
    parser = _Parser()
    node = parser.node(raw, pointer, 1)
    if parser.errors or node is None:
        raise RuleInvalid(parser.errors or [{"pointer": pointer, "detail": "invalid rule"}])
    return node

"""A validated rule as a tree of small immutable nodes. Every node keeps the JSON pointer it
was read from, so counts and errors can name it."""

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from segment_api.rules.catalogue import FieldSpec, Source

# A value as the rule holds it: text, a number, a moment, a span of days, or (attributes only)
# a boolean; `in`/`not_in` hold a tuple, `between` a (low, high) pair.
Scalar = str | Decimal | datetime | timedelta | bool
Value = Scalar | tuple[Scalar, ...] | None


@dataclass(frozen=True)
class Condition:
    field: FieldSpec
    op: str
    value: Value
    pointer: str


@dataclass(frozen=True)
class Membership:
    """`{"segment": id, "op": "member" | "not_member"}`."""

    segment_id: uuid.UUID
    member: bool
    pointer: str


@dataclass(frozen=True)
class AllOf:
    children: tuple["Node", ...]
    pointer: str


@dataclass(frozen=True)
class AnyOf:
    children: tuple["Node", ...]
    pointer: str


@dataclass(frozen=True)
class Not:
    child: "Node"
    pointer: str


Node = Condition | Membership | AllOf | AnyOf | Not
Leaf = Condition | Membership


def leaves(node: Node) -> Iterator[Leaf]:
    """The conditions of a rule, in document order."""
    if isinstance(node, Condition | Membership):
        yield node
    elif isinstance(node, Not):
        yield from leaves(node.child)
    else:
        for child in node.children:
            yield from leaves(child)


def sources(node: Node) -> set[Source]:
    return {leaf.field.source for leaf in leaves(node) if isinstance(leaf, Condition)}


def referenced_segments(node: Node) -> list[Membership]:
    return [leaf for leaf in leaves(node) if isinstance(leaf, Membership)]

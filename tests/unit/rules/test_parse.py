"""A valid rule becomes a tree of typed nodes, each keeping the JSON pointer it was read from
(tests/rules/test_validation.py holds the malformed shapes and their errors)."""

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from segment_api.rules.catalogue import Kind, Source
from segment_api.rules.definition import RuleDefinition, check_manual, parse_definition
from segment_api.rules.nodes import (
    AllOf,
    AnyOf,
    Condition,
    Membership,
    Not,
    leaves,
    referenced_segments,
    sources,
)
from segment_api.rules.parse import MAX_ERRORS, RuleInvalid, parse_rule

OTHER = uuid.UUID("0190a0a0-0000-7000-8000-00000000000a")


def test_a_rule_becomes_typed_nodes_with_their_pointers() -> None:
    rule = parse_rule(
        {
            "all": [
                {"field": "email", "op": "eq", "value": "Ada@Example.COM"},
                {
                    "not": {
                        "any": [
                            {"field": "orders_count", "op": "gte", "value": 2.5},
                            {"field": "created_at", "op": "within_last_days", "value": 1.5},
                        ]
                    }
                },
                {"segment": str(OTHER), "op": "not_member"},
                {"field": "attributes.vip", "op": "eq", "value": True},
                {"field": "shipping_address.city", "op": "in", "value": ["Paris", "Lyon"]},
                {
                    "field": "last_order_at",
                    "op": "between",
                    "value": ["2026-01-01T02:00:00+02:00", "2026-02-01T00:00:00Z"],
                },
                {"field": "rfm.score", "op": "starts_with", "value": "5"},
                {"field": "first_name", "op": "exists"},
            ]
        },
        "/definition/rule",
    )
    assert isinstance(rule, AllOf)
    assert rule.pointer == "/definition/rule"
    email, negated, membership, vip, city, ordered, score, named = rule.children

    # Emails are stored lower-cased and compared so.
    assert isinstance(email, Condition)
    assert (email.field.kind, email.op, email.value) == (Kind.STRING, "eq", "ada@example.com")
    assert email.pointer == "/definition/rule/all/0"

    assert isinstance(negated, Not)
    assert isinstance(negated.child, AnyOf)
    count, recent = negated.child.children
    assert isinstance(count, Condition)
    assert isinstance(recent, Condition)
    # Numbers are exact decimals; relative dates are spans of (possibly fractional) days.
    assert count.value == Decimal("2.5")
    assert recent.value == timedelta(days=1.5)
    assert recent.pointer == "/definition/rule/all/1/not/any/1"

    assert membership == Membership(OTHER, member=False, pointer="/definition/rule/all/2")

    assert isinstance(vip, Condition)
    assert (vip.field.kind, vip.field.key, vip.value) == (Kind.ATTRIBUTE, "vip", True)

    assert isinstance(city, Condition)
    assert (city.field.name, city.field.key, city.value) == (
        "shipping_address",
        "city",
        ("Paris", "Lyon"),
    )

    # A moment is a moment, whatever offset it was written in.
    assert isinstance(ordered, Condition)
    assert ordered.value == (
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 2, 1, tzinfo=UTC),
    )

    assert isinstance(score, Condition)
    assert (score.field.kind, score.value) == (Kind.SCORE, "5")
    assert isinstance(named, Condition)
    assert (named.op, named.value) == ("exists", None)

    top = "/definition/rule/all"
    assert [leaf.pointer for leaf in leaves(rule)] == [
        f"{top}/0",
        f"{top}/1/not/any/0",
        f"{top}/1/not/any/1",
        *(f"{top}/{index}" for index in range(2, 8)),
    ]
    assert sources(rule) == {Source.CUSTOMER, Source.ORDERS, Source.RFM}
    assert referenced_segments(rule) == [membership]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, Decimal(3)),
        (0.1, Decimal("0.1")),
        (-(10**15), Decimal(-(10**15))),
        (1e15, Decimal(10**15)),
    ],
)
def test_numbers_are_the_decimals_written(value: float, expected: Decimal) -> None:
    rule = parse_rule({"field": "total_revenue", "op": "gt", "value": value}, "/rule")
    assert isinstance(rule, Condition)
    assert rule.value == expected


def test_at_most_fifty_errors_are_listed_and_the_message_names_the_first_five() -> None:
    with pytest.raises(RuleInvalid) as raised:
        parse_rule(
            {"any": [{"field": f"nope{n}", "op": "eq", "value": 1} for n in range(80)]}, "/r"
        )
    assert len(raised.value.errors) == MAX_ERRORS
    assert str(raised.value).count("unknown field") == 5
    assert str(raised.value).startswith("/r/any/0/field: unknown field")


def test_a_definition_carries_its_size_limit_and_order() -> None:
    rule = {"field": "email_status", "op": "eq", "value": "subscribed"}
    parsed = parse_definition({"type": "rule", "rule": rule, "max_size": 10, "order_by": None})
    assert parsed == RuleDefinition(parse_rule(rule, "/definition/rule"), 10, "random")
    with pytest.raises(RuleInvalid) as raised:
        parse_definition({"type": "rule", "order_by": "total_revenue_desc"})
    assert [error["pointer"] for error in raised.value.errors] == [
        "/definition/rule",
        "/definition/order_by",
    ]
    with pytest.raises(RuleInvalid) as raised:
        check_manual({"type": "manual", "max_size": 3})
    assert raised.value.errors == [
        {"pointer": "/definition/max_size", "detail": "only rule definitions take this field"}
    ]

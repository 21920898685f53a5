"""Rules compile to one PostgreSQL statement whose every value is a bound parameter, joining
only what the rule reads (tests/rules/test_semantics.py runs them against data)."""

import re
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import ClauseElement

from segment_api.rules.compile import RuleCompiler, SortKey, random_seed
from segment_api.rules.parse import parse_rule
from segment_api.rules.strategy import (
    LATERAL_BELOW,
    PROBE_MIN_ROWS,
    choose_strategy,
    customer_conditions,
    probe,
)

DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]
OTHER = "0190a0a0-0000-7000-8000-00000000000a"


def compiled(statement: ClauseElement) -> tuple[str, dict[str, Any]]:
    """The SQL text on one line, and its bound parameters."""
    sql = statement.compile(dialect=DIALECT)
    return re.sub(r"\s+", " ", str(sql)), dict(sql.params)


def rule(raw: object) -> RuleCompiler:
    return RuleCompiler(parse_rule(raw, "/rule"))


# Rules whose values must travel as parameters, never inside the SQL text.
VALUES: list[tuple[dict[str, Any], list[object]]] = [
    ({"field": "first_name", "op": "eq", "value": "O'Brien"}, ["O'Brien"]),
    ({"field": "email", "op": "in", "value": ["A@x.io", "b@x.io"]}, ["a@x.io", "b@x.io"]),
    (
        {"field": "total_revenue", "op": "between", "value": [2718, 31415.9]},
        [Decimal(2718), Decimal("31415.9")],
    ),
    ({"field": "attributes.tier", "op": "eq", "value": "gold'; --"}, ['{"tier":"gold\'; --"}']),
    ({"field": "last_name", "op": "starts_with", "value": "Mc_"}, ["Mc\\_%"]),
    ({"segment": OTHER, "op": "member"}, [uuid.UUID(OTHER)]),
]


@pytest.mark.parametrize(("raw", "values"), VALUES)
def test_every_value_is_a_bound_parameter(raw: dict[str, Any], values: list[object]) -> None:
    sql, params = compiled(rule(raw).selection())
    for value in values:
        assert value in params.values(), params
        assert str(value) not in sql


def test_a_customer_rule_reads_the_customers_table_alone() -> None:
    sql, params = compiled(
        rule({"field": "email_status", "op": "eq", "value": "pending"}).selection()
    )
    assert sql.startswith("SELECT c.id AS customer_id, ")
    assert "FROM customers AS c WHERE c.email_status = " in sql
    assert " JOIN " not in sql
    assert "pending" in params.values()


def test_order_fields_read_only_the_aggregates_they_need() -> None:
    sql, params = compiled(rule({"field": "orders_count", "op": "gte", "value": 2}).selection())
    assert (
        "LEFT OUTER JOIN (SELECT orders.customer_id AS customer_id, count(*) AS orders_count" in sql
    )
    assert "GROUP BY orders.customer_id) AS o ON o.customer_id = c.id" in sql
    assert "sum(" not in sql
    assert "max(" not in sql
    assert "placed" in params.values()  # only placed orders count

    sql, _ = compiled(rule({"field": "average_order_value", "op": "gt", "value": 10}).selection())
    assert "sum(orders.total) AS revenue" in sql
    assert "count(*) AS orders_count" in sql
    assert "min(" not in sql


def test_the_lateral_strategy_looks_up_each_customers_orders() -> None:
    raw = parse_rule({"field": "last_order_at", "op": "exists"}, "/rule")
    sql, _ = compiled(RuleCompiler(raw, strategy="lateral").selection())
    assert "LEFT OUTER JOIN LATERAL (SELECT max(orders.placed_at) AS last_order_at" in sql
    assert "WHERE orders.customer_id = c.id AND orders.status = " in sql
    assert "AS o ON true" in sql
    assert "GROUP BY" not in sql


def test_negations_hold_for_customers_without_a_value() -> None:
    """`ne`, `not_in`, `not_exists` and `not` are `IS NOT TRUE`: a NULL comparison counts as
    false, so its negation holds."""
    for raw in (
        {"field": "email_status", "op": "ne", "value": "subscribed"},
        {"field": "first_name", "op": "not_in", "value": ["Ada"]},
        {"field": "email", "op": "not_exists"},
        {"not": {"field": "orders_count", "op": "gt", "value": 1}},
    ):
        sql, _ = compiled(rule(raw).selection())
        assert sql.endswith(") IS NOT true"), sql


def test_text_matches_escape_like_wildcards_and_ignore_case() -> None:
    sql, params = compiled(
        rule({"field": "email", "op": "contains", "value": "50%_OFF\\"}).selection()
    )
    assert "c.email ILIKE " in sql
    assert "ESCAPE '\\'" in sql
    assert "%50\\%\\_off\\\\%" in params.values()


def test_string_order_compares_bytes() -> None:
    sql, _ = compiled(rule({"field": "last_name", "op": "lt", "value": "M"}).selection())
    assert '(c.last_name COLLATE "C") < ' in sql


def test_attribute_lists_compare_as_json_by_value_type() -> None:
    sql, params = compiled(
        rule({"field": "attributes.tier", "op": "in", "value": ["gold", 3, True]}).selection()
    )
    assert "(c.attributes -> " in sql
    assert "= ANY (CAST(" in sql
    assert "AS JSONB[])" in sql
    assert ['"gold"', "3", "true"] in params.values()
    assert "tier" in params.values()


def test_sort_keys() -> None:
    raw = parse_rule({"field": "email", "op": "exists"}, "/rule")
    seed = random_seed("segment-1")
    sql, params = compiled(RuleCompiler(raw, sort=SortKey("random", seed)).selection())
    assert "hashtextextended(CAST(c.id AS TEXT), " in sql
    assert seed in params.values()
    assert random_seed("segment-1") == seed != random_seed("segment-2")

    sql, _ = compiled(RuleCompiler(raw, sort=SortKey("total_revenue_desc", seed)).selection())
    assert "sum(orders.total) AS revenue" in sql  # the sort reads orders the rule does not
    sql, _ = compiled(RuleCompiler(raw, sort=SortKey("rfm_score_desc", seed)).selection())
    assert "LEFT OUTER JOIN customer_rfm AS r ON r.customer_id = c.id" in sql


def test_counts_give_the_size_then_each_condition_alone() -> None:
    compiler = rule(
        {
            "any": [
                {"field": "email_status", "op": "eq", "value": "subscribed"},
                {"field": "orders_count", "op": "gt", "value": 3},
            ]
        }
    )
    sql, _ = compiled(compiler.counts())
    assert re.findall(r"count\(\*\) FILTER \(WHERE .*?\) AS (\w+)", sql) == ["size", "c0", "c1"]


def test_the_strategy_probe_samples_the_customer_conditions() -> None:
    parsed = parse_rule(
        {
            "all": [
                {"field": "attributes.tier", "op": "eq", "value": "gold"},
                {"field": "orders_count", "op": "gt", "value": 3},
                {
                    "any": [
                        {"field": "email", "op": "exists"},
                        {"field": "rfm.recency", "op": "gt", "value": 3},
                    ]
                },
            ]
        },
        "/rule",
    )
    assert [part.pointer for part in customer_conditions(parsed)] == ["/rule/all/0"]
    statement = probe(parsed)
    assert statement is not None
    sql, params = compiled(statement)
    assert "FROM customers AS c TABLESAMPLE system(" in sql
    assert "REPEATABLE (" in sql
    assert "orders" not in sql
    assert 1.0 in params.values()
    # Nothing to probe without orders to read, or without customer conditions to apply.
    assert probe(parse_rule({"field": "email", "op": "exists"}, "/rule")) is None
    assert probe(parse_rule({"field": "orders_count", "op": "gt", "value": 1}, "/rule")) is None


@pytest.mark.parametrize(
    ("kept", "seen", "strategy"),
    [
        (0, PROBE_MIN_ROWS - 1, "grouped"),  # too small a sample to tell
        (0, PROBE_MIN_ROWS, "lateral"),
        (int(LATERAL_BELOW * 1000) - 1, 1000, "lateral"),
        (int(LATERAL_BELOW * 1000), 1000, "grouped"),
        (1000, 1000, "grouped"),
    ],
)
def test_lateral_when_the_customer_conditions_keep_few(kept: int, seen: int, strategy: str) -> None:
    assert choose_strategy(kept, seen) == strategy

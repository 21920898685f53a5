"""Random rules over a small store: the SQL the compiler writes (in both of its shapes) selects
exactly the customers a plain Python evaluation of the same rule selects, and counts each
condition alike."""

import os
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from segment_api.rules.compile import RuleCompiler
from segment_api.rules.nodes import leaves
from segment_api.rules.parse import RuleInvalid, parse_rule
from segment_api.rules.repository import tune
from tests.rules import store
from tests.rules.reference import Person, condition, evaluate

NOW = store.now_utc()
PEOPLE, SEGMENTS = store.build(NOW)


def _iso(moment: datetime) -> str:
    return moment.isoformat()


STRINGS = sorted(
    {
        *(p.email for p in PEOPLE if p.email),
        *(p.first_name for p in PEOPLE if p.first_name),
        *(p.last_name for p in PEOPLE if p.last_name),
        *store.CITIES,
        "ADA",
        "a",
        "zz",
        "%",
        "_",
        "o'",
        "EXAMPLE.COM",
        "10115",
    }
)
MOMENTS = [_iso(store.ago(NOW, days, hours=0)) for days in (0, 1, 30, 200, 365, 500, 900)] + [
    _iso(p.created_at) for p in PEOPLE[:5]
]
NUMBERS = [-1, 0, 1, 2, 3, 5, 6, 12.5, 19.99, 30, 100, 250.05, 400, 1000]
DAYS = [1, 7, 30, 90, 180, 365, 720]

STRING_FIELDS = [
    "email",
    "first_name",
    "last_name",
    "shipping_address.city",
    "shipping_address.postal_code",
    "billing_address.country",
    "billing_address.line2",
]
NUMBER_FIELDS = [
    "orders_count",
    "total_revenue",
    "average_order_value",
    "days_since_last_order",
    "rfm.recency",
    "rfm.frequency",
    "rfm.monetary",
]
TIME_FIELDS = ["created_at", "first_order_at", "last_order_at"]
ATTRIBUTE_KEYS = ["tier", "age", "score", "vip", "code", "note", "missing"]
ATTRIBUTE_VALUES: list[Any] = [
    "gold",
    "Gold",
    "silver",
    "10",
    "abc",
    "hello world",
    "",
    10,
    10.0,
    18,
    45,
    3.5,
    True,
    False,
]


def _ordered_pair(values: list[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.sampled_from(values), min_size=2, max_size=2).map(sorted)


def _condition(
    fields: list[str], ops: list[str], values: st.SearchStrategy[Any]
) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda field, op, value: {"field": field, "op": op, "value": value},
        st.sampled_from(fields),
        st.sampled_from(ops),
        values,
    )


def _presence(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda field, op: {"field": field, "op": op},
        st.sampled_from(fields),
        st.sampled_from(["exists", "not_exists"]),
    )


def _valued(
    fields: list[str], values: list[Any], scalar_ops: list[str]
) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        _condition(fields, scalar_ops, st.sampled_from(values)),
        _condition(
            fields, ["in", "not_in"], st.lists(st.sampled_from(values), min_size=1, max_size=3)
        ),
        _condition(fields, ["between"], _ordered_pair(values)),
    )


def _attribute_condition() -> st.SearchStrategy[dict[str, Any]]:
    fields = [f"attributes.{key}" for key in ATTRIBUTE_KEYS]
    numbers = [value for value in ATTRIBUTE_VALUES if type(value) in (int, float)]
    texts = [value for value in ATTRIBUTE_VALUES if isinstance(value, str)]
    return st.one_of(
        _condition(fields, ["eq", "ne"], st.sampled_from(ATTRIBUTE_VALUES)),
        _condition(
            fields,
            ["in", "not_in"],
            st.lists(st.sampled_from(ATTRIBUTE_VALUES), min_size=1, max_size=3),
        ),
        _condition(fields, ["lt", "lte", "gt", "gte"], st.sampled_from(numbers + texts)),
        _condition(fields, ["between"], _ordered_pair(numbers) | _ordered_pair(texts)),
        _condition(fields, ["contains", "starts_with"], st.sampled_from([t for t in texts if t])),
        _presence(fields),
    )


CONDITIONS = st.one_of(
    _valued(STRING_FIELDS, STRINGS, ["eq", "ne", "lt", "lte", "gt", "gte"]),
    _condition(STRING_FIELDS, ["contains", "starts_with"], st.sampled_from(STRINGS)),
    _presence(STRING_FIELDS + NUMBER_FIELDS + TIME_FIELDS + ["rfm.score"]),
    _condition(["email_status"], ["eq", "ne"], st.sampled_from(store.STATUSES)),
    _condition(
        ["email_status"], ["in", "not_in"], st.lists(st.sampled_from(store.STATUSES), min_size=1)
    ),
    _valued(NUMBER_FIELDS, NUMBERS, ["eq", "ne", "lt", "lte", "gt", "gte"]),
    _condition(TIME_FIELDS, ["eq", "ne", "lt", "lte", "gt", "gte"], st.sampled_from(MOMENTS)),
    _condition(TIME_FIELDS, ["between"], _ordered_pair(MOMENTS)),
    _condition(TIME_FIELDS, ["within_last_days", "before_last_days"], st.sampled_from(DAYS)),
    _condition(["rfm.score"], ["eq", "ne"], st.sampled_from(["111", "345", "555", "123"])),
    _condition(["rfm.score"], ["starts_with"], st.sampled_from(["1", "5", "34", "2"])),
    _attribute_condition(),
    st.builds(
        lambda segment, op: {"segment": segment, "op": op},
        st.sampled_from(SEGMENTS),
        st.sampled_from(["member", "not_member"]),
    ),
)

RULES = st.recursive(
    CONDITIONS,
    lambda children: st.one_of(
        st.builds(lambda nodes: {"all": nodes}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda nodes: {"any": nodes}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda node: {"not": node}, children),
    ),
    max_leaves=8,
)


def _selected(test: Callable[[Person], bool]) -> set[int]:
    return {person.id for person in PEOPLE if test(person)}


@pytest.mark.asyncio
async def test_the_store_has_a_bit_of_everything() -> None:
    """The data set exercises what the rules can tell apart."""
    assert any(p.email is None for p in PEOPLE)
    assert any(p.rfm is None and p.placed() for p in PEOPLE)
    assert any(not p.placed() for p in PEOPLE)
    assert any(len(p.placed()) > 2 for p in PEOPLE)
    assert {type(p.attributes.get("code")) for p in PEOPLE} >= {int, str, bool}


@pytest.mark.asyncio
@settings(
    max_examples=int(os.environ.get("RULE_EXAMPLES", "150")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rule=RULES)
async def test_sql_selects_what_python_selects(clean_db: AsyncEngine, rule: dict[str, Any]) -> None:
    try:
        parsed = parse_rule(rule, "/rule")
    except RuleInvalid:
        reject()  # e.g. an email range [ADA, a]: lower-cased, its low is above its high
    await _ensure_store(clean_db)
    # SQL runs at the moment of its transaction; the store keeps every boundary 12 h away.
    now = store.now_utc()
    expected = _selected(lambda person: evaluate(person, rule, now))
    async with clean_db.begin() as conn:
        await tune(conn)
        for strategy in ("grouped", "lateral"):
            compiler = RuleCompiler(parsed, strategy=strategy)
            rows = await conn.execute(select(compiler.selection().subquery().c.customer_id))
            assert {row[0] for row in rows} == expected, (strategy, rule)
        counted = (await conn.execute(RuleCompiler(parsed).counts())).one()
    assert counted[0] == len(expected)
    for index, leaf in enumerate(leaves(parsed)):
        node = _node_at(rule, leaf.pointer.removeprefix("/rule"))
        test = evaluate if "segment" in node else condition
        want = sum(test(person, node, now) for person in PEOPLE)
        assert counted[index + 1] == want, (leaf.pointer, node)


def _node_at(rule: dict[str, Any], pointer: str) -> dict[str, Any]:
    node: Any = rule
    for part in pointer.split("/")[1:]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    assert isinstance(node, dict)
    return node


async def _ensure_store(engine: AsyncEngine) -> None:
    """The store, written once per test (examples share it; clean_db emptied the tables)."""
    async with engine.connect() as conn:
        present = (await conn.execute(text("SELECT count(*) FROM customers"))).scalar_one()
    if present != len(PEOPLE):
        await store.write(engine, PEOPLE, SEGMENTS)


def test_time_boundaries_are_far_from_now() -> None:
    for person in PEOPLE:
        for moment in [person.created_at, *(at for _, at, _ in person.orders)]:
            hours = ((NOW - moment) % timedelta(days=1)).total_seconds() / 3600
            assert 11 <= hours <= 13

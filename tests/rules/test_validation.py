"""Rules are validated when saved: every malformed shape is a 422 naming the offending node
or value by its JSON pointer, and nothing is written."""

import uuid
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from segment_api.rules.parse import MAX_CONDITIONS, RuleInvalid, parse_rule
from tests.api.helpers import assert_problem, make_segment
from tests.rules.conftest import Snapshot
from tests.rules.helpers import make_rule_segment, settled

GOOD = {"field": "email_status", "op": "eq", "value": "subscribed"}


def nested(depth: int) -> dict[str, Any]:
    rule: dict[str, Any] = GOOD
    for _ in range(depth - 1):
        rule = {"not": rule}
    return rule


# (rule, pointer relative to the rule, words the detail must contain)
BAD: list[tuple[object, str, str]] = [
    ([], "", "must be an object"),
    ("email", "", "must be an object"),
    (None, "", "must be an object"),
    ({}, "", "unknown node"),
    ({"and": [GOOD]}, "", "unknown node"),
    ({"all": [GOOD], "any": [GOOD]}, "", "exactly one"),
    ({"field": "email", "op": "exists", "segment": str(uuid.uuid4())}, "", "exactly one"),
    ({"all": GOOD}, "/all", "list of nodes"),
    ({"all": []}, "/all", "at least one"),
    ({"any": []}, "/any", "at least one"),
    ({"all": [GOOD], "extra": 1}, "/extra", "unknown key"),
    ({"not": [GOOD]}, "/not", "must be an object"),
    ({"not": GOOD, "x": 1}, "/x", "unknown key"),
    ({"all": [GOOD, 3]}, "/all/1", "must be an object"),
    (
        {"all": [GOOD, {"any": [{"field": "nope", "op": "eq", "value": 1}]}]},
        "/all/1/any/0/field",
        "unknown field",
    ),
    ({"field": 3, "op": "eq", "value": 1}, "/field", "must be a string"),
    ({"field": "attributes.", "op": "exists"}, "/field", "attribute keys"),
    ({"field": "attributes.a b", "op": "exists"}, "/field", "attribute keys"),
    ({"field": "attributes." + "k" * 65, "op": "exists"}, "/field", "attribute keys"),
    ({"field": "shipping_address.street", "op": "exists"}, "/field", "address part"),
    ({"field": "rfm.total", "op": "exists"}, "/field", "unknown field"),
    ({"field": "email", "value": "a"}, "/op", "required"),
    ({"field": "email", "op": "like", "value": "a"}, "/op", "unknown operator"),
    ({"field": "email", "op": 1, "value": "a"}, "/op", "unknown operator"),
    ({"field": "email", "op": "eq"}, "/value", "required"),
    ({"field": "email", "op": "eq", "value": "a", "extra": True}, "/extra", "unknown key"),
    ({"field": "email", "op": "exists", "value": "a"}, "/value", "takes no value"),
    ({"field": "email", "op": "within_last_days", "value": 3}, "/op", "does not apply"),
    ({"field": "orders_count", "op": "contains", "value": "1"}, "/op", "does not apply"),
    (
        {"field": "created_at", "op": "in", "value": ["2026-01-01T00:00:00Z"]},
        "/op",
        "does not apply",
    ),
    ({"field": "email_status", "op": "gt", "value": "pending"}, "/op", "does not apply"),
    ({"field": "email_status", "op": "exists"}, "/op", "does not apply"),
    ({"field": "email_status", "op": "eq", "value": "gone"}, "/value", "one of"),
    ({"field": "email_status", "op": "in", "value": ["pending", "gone"]}, "/value/1", "one of"),
    ({"field": "orders_count", "op": "gt", "value": "2"}, "/value", "number"),
    ({"field": "orders_count", "op": "gt", "value": True}, "/value", "number"),
    ({"field": "orders_count", "op": "gt", "value": None}, "/value", "number"),
    ({"field": "orders_count", "op": "gt", "value": 10**16}, "/value", "number"),
    ({"field": "total_revenue", "op": "eq", "value": [1]}, "/value", "number"),
    ({"field": "first_name", "op": "eq", "value": 5}, "/value", "string"),
    ({"field": "first_name", "op": "eq", "value": "a\x00b"}, "/value", "NUL"),
    ({"field": "first_name", "op": "eq", "value": "x" * 1001}, "/value", "1000"),
    ({"field": "first_name", "op": "contains", "value": ""}, "/value", "non-empty"),
    ({"field": "created_at", "op": "gt", "value": "2026-01-01T00:00:00"}, "/value", "time zone"),
    ({"field": "created_at", "op": "gt", "value": "2026-01-01"}, "/value", "time zone"),
    ({"field": "created_at", "op": "gt", "value": "yesterday"}, "/value", "RFC 3339"),
    ({"field": "created_at", "op": "gt", "value": 1700000000}, "/value", "RFC 3339"),
    ({"field": "created_at", "op": "gt", "value": "1700000000"}, "/value", "RFC 3339"),
    # Valid in their own offsets, beyond year 9999 or before year 1 in UTC.
    (
        {"field": "created_at", "op": "lt", "value": "9999-12-31T23:00:00-05:00"},
        "/value",
        "9999-12-31 in UTC",
    ),
    (
        {
            "field": "last_order_at",
            "op": "between",
            "value": ["0001-01-01T00:00:00+05:00", "2026-01-01T00:00:00Z"],
        },
        "/value/0",
        "0001-01-01",
    ),
    ({"field": "created_at", "op": "within_last_days", "value": 0}, "/value", "above 0"),
    ({"field": "created_at", "op": "within_last_days", "value": -3}, "/value", "above 0"),
    ({"field": "created_at", "op": "within_last_days", "value": "30"}, "/value", "days"),
    ({"field": "created_at", "op": "before_last_days", "value": 36501}, "/value", "days"),
    ({"field": "orders_count", "op": "in", "value": []}, "/value", "non-empty list"),
    ({"field": "orders_count", "op": "in", "value": 3}, "/value", "non-empty list"),
    ({"field": "orders_count", "op": "in", "value": list(range(1001))}, "/value", "at most 1000"),
    ({"field": "orders_count", "op": "in", "value": [1, "2"]}, "/value/1", "number"),
    ({"field": "orders_count", "op": "between", "value": [1]}, "/value", "[low, high]"),
    ({"field": "orders_count", "op": "between", "value": 1}, "/value", "[low, high]"),
    ({"field": "orders_count", "op": "between", "value": [5, 1]}, "/value", "low is above high"),
    ({"field": "orders_count", "op": "between", "value": [1, "x"]}, "/value/1", "number"),
    ({"field": "rfm.score", "op": "eq", "value": "5"}, "/value", "three digits"),
    ({"field": "rfm.score", "op": "eq", "value": "605"}, "/value", "three digits"),
    ({"field": "rfm.score", "op": "starts_with", "value": "6"}, "/value", "three digits"),
    ({"field": "rfm.score", "op": "gt", "value": "111"}, "/op", "does not apply"),
    ({"field": "attributes.vip", "op": "gt", "value": True}, "/value", "booleans"),
    ({"field": "attributes.tier", "op": "eq", "value": None}, "/value", "string, a number"),
    ({"field": "attributes.tier", "op": "eq", "value": {"a": 1}}, "/value", "string, a number"),
    ({"field": "attributes.tier", "op": "contains", "value": 3}, "/value", "string"),
    ({"field": "attributes.age", "op": "between", "value": [1, "9"]}, "/value", "same type"),
    ({"field": "attributes.age", "op": "in", "value": [1, [2]]}, "/value/1", "string, a number"),
    ({"segment": "not-a-uuid", "op": "member"}, "/segment", "UUID"),
    ({"segment": 5, "op": "member"}, "/segment", "UUID"),
    ({"segment": str(uuid.uuid4())}, "/op", "member or not_member"),
    ({"segment": str(uuid.uuid4()), "op": "eq"}, "/op", "member or not_member"),
    ({"segment": str(uuid.uuid4()), "op": "member", "value": 1}, "/value", "unknown key"),
    (nested(11), "/not" * 10, "10 levels"),
    ({"all": [GOOD] * (MAX_CONDITIONS + 1)}, f"/all/{MAX_CONDITIONS}", "at most 100 conditions"),
]


@pytest.mark.parametrize(("rule", "pointer", "words"), BAD)
def test_a_malformed_rule_names_the_offending_node(rule: object, pointer: str, words: str) -> None:
    with pytest.raises(RuleInvalid) as raised:
        parse_rule(rule, "/definition/rule")
    errors = raised.value.errors
    assert {"pointer": f"/definition/rule{pointer}", "detail": errors[0]["detail"]} in errors
    matching = [e for e in errors if e["pointer"] == f"/definition/rule{pointer}"]
    assert any(words in e["detail"] for e in matching), errors


def test_limits_are_inclusive_and_every_error_is_reported() -> None:
    parse_rule(nested(10), "/rule")
    parse_rule({"all": [GOOD] * MAX_CONDITIONS}, "/rule")
    with pytest.raises(RuleInvalid) as raised:
        parse_rule(
            {
                "all": [
                    {"field": "nope", "op": "eq", "value": 1},
                    {"field": "email", "op": "eq", "value": 1},
                    {"segment": "x", "op": "member"},
                ]
            },
            "/rule",
        )
    pointers = [e["pointer"] for e in raised.value.errors]
    assert pointers == ["/rule/all/0/field", "/rule/all/1/value", "/rule/all/2/segment"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["all", "any", "not", "field", "op", "value", "segment", "x"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, database=None)
@given(raw=JSON)
def test_any_json_is_a_rule_or_a_list_of_pointed_errors(raw: object) -> None:
    """Whatever the JSON, validation never fails otherwise (no 500 for bad input)."""
    errors: list[dict[str, str]] = []
    try:
        parse_rule(raw, "/rule")
    except RuleInvalid as exc:
        errors = exc.errors or [{"pointer": "", "detail": "no errors listed"}]
    for error in errors:
        assert error["pointer"].startswith("/rule")
        assert error["detail"]


@pytest.mark.asyncio
async def test_the_api_answers_422_with_body_pointers_and_writes_nothing(
    api: httpx.AsyncClient, row_counts: Snapshot
) -> None:
    manual = await make_segment(api, "Manual")
    before = await row_counts()
    bad = {"all": [GOOD, {"field": "orders_count", "op": "gt", "value": "2"}]}
    created = await api.post(
        "/v1/segments", json={"name": "R", "definition": {"type": "rule", "rule": bad}}
    )
    problem = assert_problem(created, 422)
    assert problem["errors"] == [
        {
            "pointer": "/definition/rule/all/1/value",
            "detail": "must be a number of magnitude at most 1000000000000000",
        }
    ]
    patched = await api.patch(
        f"/v1/segments/{manual}", json={"definition": {"type": "rule", "rule": bad}}
    )
    assert assert_problem(patched, 422)["errors"][0]["pointer"] == "/definition/rule/all/1/value"
    preview = await api.post("/v1/segments/preview", json={"rule": bad})
    assert assert_problem(preview, 422)["errors"][0]["pointer"] == "/rule/all/1/value"
    for definition, pointer in [
        ({"type": "rule"}, "/definition/rule"),
        ({"type": "rule", "rule": GOOD, "order_by": "random"}, "/definition/order_by"),
        ({"type": "manual", "rule": GOOD}, "/definition/rule"),
        ({"type": "manual", "max_size": 3}, "/definition/max_size"),
        ({"type": "rule", "rule": GOOD, "max_size": 0}, "/definition/max_size"),
        ({"type": "rule", "rule": GOOD, "max_size": "10"}, "/definition/max_size"),
        ({"type": "rule", "rule": GOOD, "max_size": 5, "order_by": "name"}, "/definition/order_by"),
        ({"type": "rule", "rule": []}, "/definition/rule"),
        ({"type": "magic"}, "/definition/type"),
    ]:
        response = await api.post("/v1/segments", json={"name": "R", "definition": definition})
        problem = assert_problem(response, 422)
        assert pointer in [e["pointer"] for e in problem["errors"]], (definition, problem)
    assert await row_counts() == before
    assert (await api.get(f"/v1/segments/{manual}")).json()["version"] == 1


@pytest.mark.asyncio
async def test_references_must_exist_and_never_close_a_cycle(
    api: httpx.AsyncClient, clean_db: AsyncEngine, row_counts: Snapshot
) -> None:
    base = await make_segment(api, "Base")
    a = await make_rule_segment(api, "A", {"segment": base, "op": "member"})
    b = await make_rule_segment(api, "B", {"all": [GOOD, {"segment": a, "op": "not_member"}]})
    c = await make_rule_segment(api, "C", {"any": [{"segment": b, "op": "member"}]})
    await settled(clean_db)
    before = await row_counts()

    missing = str(uuid.uuid4())
    response = await api.post(
        "/v1/segments",
        json={
            "name": "D",
            "definition": {"type": "rule", "rule": {"not": {"segment": missing, "op": "member"}}},
        },
    )
    problem = assert_problem(response, 422)
    assert problem["errors"] == [
        {"pointer": "/definition/rule/not/segment", "detail": "no segment has this id"}
    ]
    # A refers to C, which refers to B, which refers to A: a cycle.
    cycle = {"type": "rule", "rule": {"all": [GOOD, {"segment": c, "op": "member"}]}}
    problem = assert_problem(await api.patch(f"/v1/segments/{a}", json={"definition": cycle}), 422)
    assert problem["errors"][0]["pointer"] == "/definition/rule/all/1/segment"
    assert "cycle" in problem["errors"][0]["detail"]
    assert "'C' -> 'B'" in problem["errors"][0]["detail"]
    itself = {"type": "rule", "rule": {"segment": a, "op": "member"}}
    problem = assert_problem(await api.patch(f"/v1/segments/{a}", json={"definition": itself}), 422)
    assert problem["errors"][0]["detail"] == "a segment cannot refer to itself"
    # Deleting a segment that rules refer to is refused, naming them.
    problem = assert_problem(await api.delete(f"/v1/segments/{b}"), 409)
    assert "'C'" in problem["detail"]
    assert await row_counts() == before

    # Base -> A -> B -> C is no cycle: C may refer to A too.
    both = {
        "type": "rule",
        "rule": {"all": [{"segment": a, "op": "member"}, {"segment": b, "op": "member"}]},
    }
    assert (await api.patch(f"/v1/segments/{c}", json={"definition": both})).status_code == 200
    manual = {"type": "manual"}
    assert (await api.patch(f"/v1/segments/{c}", json={"definition": manual})).status_code == 200
    assert (await api.delete(f"/v1/segments/{b}")).status_code == 204

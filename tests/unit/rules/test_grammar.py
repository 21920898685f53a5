"""The published rule grammar and definition (rules/grammar.py) describe what the parser
accepts: every rule and definition the parser takes is valid by the schema the OpenAPI
document publishes, and the shapes it refuses by their form are refused by the schema too."""

import copy
import math
import uuid
from datetime import UTC
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import TypeAdapter

from segment_api.fields import ATTRIBUTE_KEY_PATTERN
from segment_api.rules.catalogue import (
    ADDRESS_PARTS,
    ALL_OPERATORS,
    ENUM_VALUES,
    FIELDS,
    OPERATORS,
    PRESENCE,
    Kind,
    lookup,
)
from segment_api.rules.definition import check_manual, parse_definition
from segment_api.rules.grammar import RULE_EXAMPLE, RuleNode
from segment_api.rules.parse import RuleInvalid, parse_rule
from segment_api.segments.schemas import SegmentDefinition

FORMATS = Draft202012Validator.FORMAT_CHECKER
RULE = Draft202012Validator(TypeAdapter(RuleNode).json_schema(), format_checker=FORMATS)
DEFINITION = Draft202012Validator(
    TypeAdapter(SegmentDefinition).json_schema(), format_checker=FORMATS
)


def parses(rule: object) -> bool:
    try:
        parse_rule(rule, "/rule")
    except RuleInvalid:
        return False
    return True


def definition_accepted(raw: dict[str, Any]) -> bool:
    """What a segment write accepts: the body model, then the definition's own checks."""
    try:
        definition = SegmentDefinition.model_validate(raw).stored()
        if definition["type"] == "rule":
            parse_definition(definition)
        else:
            check_manual(definition)
    except (ValueError, RuleInvalid):
        return False
    return True


# Rules built to be valid: a field, an operator its type takes, a value of that type.
attribute_names = st.from_regex(ATTRIBUTE_KEY_PATTERN, fullmatch=True).map(
    lambda key: f"attributes.{key}"
)
address_names = st.builds(
    "{}_address.{}".format, st.sampled_from(["shipping", "billing"]), st.sampled_from(ADDRESS_PARTS)
)
field_names = st.one_of(st.sampled_from(sorted(FIELDS)), attribute_names, address_names)
texts = st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=20)
numbers = st.one_of(
    st.integers(-(10**15), 10**15), st.floats(-1e15, 1e15, allow_nan=False, allow_infinity=False)
)
timestamps = st.datetimes(timezones=st.just(UTC)).map(lambda moment: moment.isoformat())


def scalar_for(kind: Kind, name: str) -> st.SearchStrategy[Any]:
    if kind is Kind.ENUM:
        return st.sampled_from(ENUM_VALUES[name])
    if kind is Kind.SCORE:
        return st.from_regex(r"[1-5]{3}", fullmatch=True)
    if kind is Kind.NUMBER:
        return numbers
    if kind is Kind.TIMESTAMP:
        return timestamps
    if kind is Kind.ATTRIBUTE:
        return st.one_of(texts, numbers, st.booleans())
    return texts


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(field_names)
    spec = lookup(name)
    assert not isinstance(spec, str)
    op = draw(st.sampled_from(OPERATORS[spec.kind]))
    condition: dict[str, Any] = {"field": name, "op": op}
    scalar = scalar_for(spec.kind, spec.name)
    if op in ("within_last_days", "before_last_days"):
        condition["value"] = draw(st.integers(1, 36_500))
    elif op in ("in", "not_in"):
        condition["value"] = draw(st.lists(scalar, min_size=1, max_size=4))
    elif op == "between":
        condition["value"] = draw(st.lists(scalar, min_size=2, max_size=2))
    elif op not in PRESENCE:
        condition["value"] = draw(scalar)
    return condition


memberships = st.builds(
    lambda segment, op: {"segment": str(segment), "op": op},
    st.uuids(),
    st.sampled_from(["member", "not_member"]),
)
valid_rules = st.recursive(
    st.one_of(conditions(), memberships),
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda nodes: {"all": nodes}),
        st.lists(children, min_size=1, max_size=3).map(lambda nodes: {"any": nodes}),
        children.map(lambda node: {"not": node}),
    ),
    max_leaves=8,
)

# Valid rules with one entry of one node changed or dropped: some the parser still takes
# (a value of another JSON type that an attribute accepts, an `exists` without its value).
json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=3), children, max_size=2)
    ),
    max_leaves=6,
)
# Mostly values and operators of other types, which the parser takes where they fit.
replacements = st.one_of(
    st.booleans(),
    numbers,
    texts,
    timestamps,
    st.sampled_from(sorted(ALL_OPERATORS | {"member", "not_member"})),
    st.lists(st.one_of(texts, numbers, st.booleans()), min_size=1, max_size=3),
    json_values,
    field_names,
    st.uuids().map(str),
)


def nodes_of(rule: Any) -> list[dict[str, Any]]:
    if isinstance(rule, list):
        return [node for item in rule for node in nodes_of(item)]
    if isinstance(rule, dict):
        return [rule, *(node for value in rule.values() for node in nodes_of(value))]
    return []


@st.composite
def mutated_rules(draw: st.DrawFn) -> Any:
    rule = copy.deepcopy(draw(valid_rules))
    leaves = [node for node in nodes_of(rule) if "field" in node or "segment" in node]
    node = draw(st.sampled_from(leaves))
    key = draw(st.sampled_from(["value", "value", "op", "field", "segment", "x"]))
    if key in node and draw(st.integers(0, 3)) == 0:
        del node[key]
    else:
        node[key] = draw(replacements)
    return rule


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_rules)
def test_every_rule_the_parser_takes_is_valid_by_the_grammar(rule: dict[str, Any]) -> None:
    assume(parses(rule))
    assert RULE.is_valid(rule), list(RULE.iter_errors(rule))[:3]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_rules())
def test_the_grammar_refuses_nothing_the_parser_takes(rule: Any) -> None:
    if parses(rule):
        assert RULE.is_valid(rule), list(RULE.iter_errors(rule))[:3]


def test_the_documented_examples_are_rules() -> None:
    assert parses(RULE_EXAMPLE)
    assert RULE.is_valid(RULE_EXAMPLE)


SEGMENT = str(uuid.UUID(int=7))


@pytest.mark.parametrize(
    "rule",
    [
        {},
        {"all": []},
        {"all": {"field": "email", "op": "exists"}},
        {"all": [{"field": "email", "op": "exists"}], "any": [{"field": "email", "op": "exists"}]},
        {"not": [{"field": "email", "op": "exists"}]},
        {"field": "email", "op": "exists", "extra": 1},
        {"field": "email"},
        {"field": "nickname", "op": "eq", "value": "x"},
        {"field": "attributes.", "op": "eq", "value": "x"},
        {"field": "shipping_address.street", "op": "eq", "value": "x"},
        {"field": "email", "op": "like", "value": "x"},
        {"field": "email", "op": "eq", "value": None},
        {"field": "email", "op": "eq", "value": {"a": 1}},
        {"field": "email", "op": "in", "value": []},
        {"field": "email", "op": "in", "value": [["nested"]]},
        {"field": "email", "op": "eq", "value": "x" * 1001},
        {"field": "email", "op": "eq", "value": "a\x00b"},
        {"segment": "not-a-uuid", "op": "member"},
        {"segment": SEGMENT, "op": "eq"},
        {"segment": SEGMENT},
        {"segment": SEGMENT, "op": "member", "field": "email"},
    ],
)
def test_shapes_the_parser_refuses_the_grammar_refuses(rule: dict[str, Any]) -> None:
    assert not parses(rule)
    assert not RULE.is_valid(rule)


@pytest.mark.parametrize(
    "definition",
    [
        {},
        {"type": "manual"},
        {"type": "manual", "rule": None, "max_size": None, "order_by": None},
        {"type": "rule", "rule": RULE_EXAMPLE},
        {"type": "rule", "rule": RULE_EXAMPLE, "max_size": 10},
        {"type": "rule", "rule": RULE_EXAMPLE, "max_size": 10, "order_by": "rfm_score_desc"},
        {"type": "rule", "rule": RULE_EXAMPLE, "max_size": None, "order_by": None},
    ],
)
def test_definitions_the_api_takes_are_valid_by_the_union(definition: dict[str, Any]) -> None:
    assert definition_accepted(definition)
    assert DEFINITION.is_valid(definition), list(DEFINITION.iter_errors(definition))


@pytest.mark.parametrize(
    "definition",
    [
        {"type": "other"},
        {"type": "manual", "rule": RULE_EXAMPLE},
        {"type": "manual", "max_size": 5},
        {"type": "rule"},
        {"type": "rule", "rule": None},
        {"type": "rule", "rule": {"field": "email"}},
        {"type": "rule", "rule": RULE_EXAMPLE, "max_size": 0},
        {"type": "rule", "rule": RULE_EXAMPLE, "max_size": math.pi},
        {"type": "rule", "rule": RULE_EXAMPLE, "max_size": 5, "order_by": "name"},
        {"type": "rule", "rule": RULE_EXAMPLE, "extra": 1},
    ],
)
def test_definitions_the_api_refuses_by_their_shape_the_union_refuses(
    definition: dict[str, Any],
) -> None:
    assert not definition_accepted(definition)
    assert not DEFINITION.is_valid(definition)

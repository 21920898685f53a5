"""A segment's stored definition, read as a rule with its size limit (SAP's size reduction)."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from segment_api.rules.nodes import Node
from segment_api.rules.parse import RuleInvalid, parse_rule

OrderBy = Literal["random", "total_revenue_desc", "last_order_at_desc", "rfm_score_desc"]
ORDERS: tuple[str, ...] = get_args(OrderBy)


@dataclass(frozen=True)
class RuleDefinition:
    rule: Node
    max_size: int | None = None
    order_by: OrderBy = "random"


def parse_definition(definition: Mapping[str, Any], pointer: str = "/definition") -> RuleDefinition:
    """A rule definition (type "rule"), as saved or about to be; raises RuleInvalid."""
    errors = []
    if definition.get("rule") is None:
        errors.append({"pointer": f"{pointer}/rule", "detail": "required when type is rule"})
    if definition.get("order_by") is not None and definition.get("max_size") is None:
        errors.append(
            {"pointer": f"{pointer}/order_by", "detail": "order_by applies only with max_size"}
        )
    try:
        rule = parse_rule(definition.get("rule"), f"{pointer}/rule") if not errors else None
    except RuleInvalid as exc:
        errors += exc.errors
    if errors or rule is None:
        raise RuleInvalid(errors)
    return RuleDefinition(
        rule=rule,
        max_size=definition.get("max_size"),
        order_by=definition.get("order_by") or "random",
    )


def check_manual(definition: Mapping[str, Any], pointer: str = "/definition") -> None:
    """A manual definition carries nothing else; raises RuleInvalid."""
    errors = [
        {"pointer": f"{pointer}/{name}", "detail": "only rule definitions take this field"}
        for name in ("rule", "max_size", "order_by")
        if definition.get(name) is not None
    ]
    if errors:
        raise RuleInvalid(errors)


def is_rule(definition: Mapping[str, Any]) -> bool:
    return definition.get("type") == "rule"

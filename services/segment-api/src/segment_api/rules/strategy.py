"""Which shape a rule's order aggregates take (rules/compile.py): `lateral` when the
customer-level conditions at the top of the rule keep few customers, judged on a 1% block
sample of the customers table; `grouped` otherwise."""

from sqlalchemy import func, literal, select, tablesample

from segment_api.rules.catalogue import Source
from segment_api.rules.compile import CUSTOMERS, AnySelect, RuleCompiler, Strategy
from segment_api.rules.nodes import AllOf, Node, sources

# Below this share of customers kept by the top-level customer conditions, per-customer
# look-ups of orders beat one grouped pass over all of them (measured: bench/rules_refresh.py).
LATERAL_BELOW = 0.5
# The probe's block sample: 1% of the customers table, the same blocks every time.
PROBE_PERCENT = 1.0
PROBE_MIN_ROWS = 500


def customer_conditions(rule: Node) -> list[Node]:
    """The parts of the rule that must hold and read only the customers table: the filter
    PostgreSQL applies before looking up anyone's orders."""
    parts = rule.children if isinstance(rule, AllOf) else (rule,)
    return [part for part in parts if not sources(part) - {Source.CUSTOMER}]


def probe(rule: Node, *, orders: bool = False) -> AnySelect | None:
    """A count of the customers a 1% block sample keeps under the customer-level conditions
    (None when no orders are read, or there are no such conditions). `orders`: orders are
    read for another reason (a sort key)."""
    if Source.ORDERS not in sources(rule) and not orders:
        return None
    parts = customer_conditions(rule)
    if not parts:
        return None
    sample = tablesample(CUSTOMERS, func.system(PROBE_PERCENT), name="c", seed=literal(0))
    compiler = RuleCompiler(AllOf(tuple(parts), ""), customers=sample)
    return select(func.count().filter(compiler.predicate()), func.count()).select_from(sample)


def choose_strategy(kept: int, seen: int) -> Strategy:
    if seen < PROBE_MIN_ROWS:
        return "grouped"
    return "lateral" if kept < LATERAL_BELOW * seen else "grouped"

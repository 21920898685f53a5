"""Folding change signals into rule-segment refreshes (docs/rules.md#refreshes).

Writers insert signals (`segment_refresh_signals`, insert-only): customers changed, their
orders changed, their RFM scores moved, or a segment's membership changed; each names the
customers, or NULL when there are too many (or everyone). A refresher pass takes them all
and, for every active rule segment they concern:

- when the rule allows re-evaluating some customers only (it has no size limit, which ranks
  everyone) and the signal names them, adds them to the segment's pending customers
  (`rule_refresh_pending`): its next refresh re-evaluates just those;
- otherwise asks for a whole refresh.

Either way the refresh is due `debounce` seconds after the first change not yet folded in;
later ones fold into it. Rules whose truth moves with time (relative dates) are refreshed
whole every `period`, and rules never computed at once.
"""

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.rules.catalogue import Source
from segment_api.rules.definition import RuleDefinition, parse_definition
from segment_api.rules.nodes import referenced_segments, sources
from segment_api.rules.parse import RuleInvalid
from segment_api.rules.requests import QUEUE
from segments_shared.jobs import store

CAUSES = {
    "customers": "customers_changed",
    "orders": "orders_changed",
    "rfm": "rfm_recomputed",
    "segment": "segment_changed",
}

_TAKE = text("DELETE FROM segment_refresh_signals RETURNING id, kind, segment_id, customer_ids")
_RULES = text(
    "SELECT id, definition, refreshed_at FROM segments "
    "WHERE active AND definition->>'type' = 'rule' ORDER BY id"
)
_PENDING = text(
    """
    INSERT INTO rule_refresh_pending (segment_id, customer_ids)
    VALUES (CAST(:segment_id AS uuid), CAST(:ids AS bigint[]))
    """
)
# Rules never computed (the default segments after install, copies), and rules with relative
# dates not recomputed for `period`, that have no refresh waiting.
_DUE = text(
    """
    SELECT s.id, s.refreshed_at IS NULL AS first FROM segments s
    WHERE s.active AND s.definition->>'type' = 'rule'
      AND (s.refreshed_at IS NULL
           OR (s.refreshed_at < now() - make_interval(secs => :period)
               AND jsonb_path_exists(s.definition, CAST(:relative AS jsonpath))))
      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.queue = :queue AND j.key = s.id::text)
    ORDER BY s.id
    """
)
RELATIVE_PATH = (
    '$.rule.** ? (@.op == "within_last_days" || @.op == "before_last_days" '
    '|| @.field == "days_since_last_order")'
)


@dataclass(frozen=True)
class Signal:
    kind: str
    segment_id: uuid.UUID | None
    customer_ids: list[int] | None


@dataclass
class Wanted:
    """What one rule segment's next refresh must cover."""

    cause: str = ""
    whole: bool = False
    customers: set[int] = field(default_factory=set)


def concerns(rule: RuleDefinition, signal: Signal) -> bool:
    """Whether the rule may select differently after this change."""
    if signal.kind == "customers":
        return True  # any customer field, and new customers, may matter
    if signal.kind == "orders":
        return Source.ORDERS in sources(rule.rule) or rule.order_by in (
            "total_revenue_desc",
            "last_order_at_desc",
        )
    if signal.kind == "rfm":
        return Source.RFM in sources(rule.rule) or rule.order_by == "rfm_score_desc"
    return any(ref.segment_id == signal.segment_id for ref in referenced_segments(rule.rule))


def partial(rule: RuleDefinition) -> bool:
    """Whether a refresh may re-evaluate some customers only: a size limit ranks everyone."""
    return rule.max_size is None


def plan(
    rules: Mapping[uuid.UUID, RuleDefinition], signals: Sequence[Signal]
) -> dict[uuid.UUID, Wanted]:
    """What each concerned rule segment's next refresh covers."""
    wanted: dict[uuid.UUID, Wanted] = {}
    for segment_id, rule in rules.items():
        for signal in signals:
            if not concerns(rule, signal):
                continue
            entry = wanted.setdefault(segment_id, Wanted())
            entry.cause = entry.cause or CAUSES[signal.kind]
            if partial(rule) and signal.customer_ids is not None:
                entry.customers.update(signal.customer_ids)
            else:
                entry.whole = True
    return wanted


def _parsed(definitions: Sequence[Mapping[str, Any]]) -> dict[uuid.UUID, RuleDefinition]:
    rules = {}
    for row in definitions:
        try:
            rules[row["id"]] = parse_definition(row["definition"])
        except RuleInvalid:
            continue  # the refresh itself reports it (rules/refresh.py)
    return rules


async def fold_signals(conn: AsyncConnection, debounce: float) -> int:
    """Take every signal and ask for the refreshes they call for; returns how many."""
    rows = (await conn.execute(_TAKE)).mappings().all()
    if not rows:
        return 0
    signals = [Signal(row["kind"], row["segment_id"], row["customer_ids"]) for row in rows]
    definitions = (await conn.execute(_RULES)).mappings().all()
    for segment_id, entry in plan(_parsed([dict(row) for row in definitions]), signals).items():
        if entry.customers and not entry.whole:
            await conn.execute(_PENDING, {"segment_id": segment_id, "ids": sorted(entry.customers)})
        payload: dict[str, Any] = {"cause": entry.cause}
        if entry.whole:
            payload["whole"] = True
        await store.request(
            conn,
            QUEUE,
            str(segment_id),
            delay=debounce,
            payload=payload,
            segment_id=segment_id,
            notify=False,
        )
    return len(rows)


async def schedule_due(conn: AsyncConnection, period: float) -> None:
    """Whole refreshes of rules never computed, and of relative-date rules every period."""
    rows = await conn.execute(_DUE, {"period": period, "relative": RELATIVE_PATH, "queue": QUEUE})
    for row in rows:
        await store.request(
            conn,
            QUEUE,
            str(row.id),
            payload={"cause": "first_refresh" if row.first else "relative_dates", "whole": True},
            segment_id=row.id,
            notify=False,
        )

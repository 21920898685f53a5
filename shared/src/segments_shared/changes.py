"""One place for a change's consequences.

A service says what happened in its unit of work (customers changed, a segment's membership
changed, an event to publish); at commit this module writes what follows from it, batched:

- `metrics_changes`: what the metrics-worker folds into KPIs and RFM scores (customers whose
  reachability or orders changed; who entered and left which segment; segments to compute
  whole);
- `segment_refresh_signals`: what segment-api's refresher folds into rule refreshes
  (customers, orders, memberships that rules may read);
- `outbox`: the events.

All three are insert-only and written in one statement: concurrent writers never wait for
each other on them (a row that every order updates would be a lock queue; docs/pitfalls.md).
Nothing sends a NOTIFY (it would serialise every writer's commit); their consumers poll.

A membership change also moves the segment's `member_count` and `membership_version`, adds
a history entry and writes its `segment.members_changed` events at once (the caller holds the
segment's lock, so these rows are not contended), so that reads later in the same transaction
see them. The events name who entered and who left by external id, at most
`MAX_IDS_PER_EVENT` each side per event, numbered `part` 1 to `parts` (docs/events.md): the
ids are joined, numbered and grouped in SQL, from the ids the caller has in hand (an API edit,
a small refresh), from parts the moving statement staged (`stage_parts`: a large refresh, a
deduplication), or from the segment's whole membership (a segment just made with its
members). A million ids never pass through Python.
"""

import json
import uuid
import weakref
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Boolean, Integer, Text, Uuid, column, func, insert, literal, select, table
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Insert, Select

from segments_shared.db.engine import driver_connection
from segments_shared.events import (
    MAX_IDS_PER_EVENT,
    CloudEvent,
    MembersChanged,
    SegmentMembersChanged,
)
from segments_shared.observability import current_correlation_id

# A membership change naming more customers than this is folded by recomputing the segment
# whole (as fast as reading that many customers' figures one by one, and a smaller row).
MAX_NAMED = 10_000

# What changed about customers:
# - `profile`: fields rules read (names, attributes, addresses, a new customer);
# - `reach`: the email or its status (KPIs count reachable members), and rules;
# - `orders`: their placed orders (KPIs, RFM, rules on orders);
# - `erased`: gone, with their orders (KPIs, RFM, rules).
CustomerChange = Literal["profile", "reach", "orders", "erased"]
_FOR_KPIS = frozenset({"reach", "orders", "erased"})


# (segment_id, customer_ids, entered, exited, whole, correlation_id) of `metrics_changes`.
MetricsRow = tuple[
    uuid.UUID | None, list[int] | None, list[int] | None, list[int] | None, bool, str | None
]


@dataclass(frozen=True)
class Staged:
    """One side of a change, `count` customers, whose ids the statement that moved them
    staged as parts (`stage_parts`) in this transaction."""

    count: int


@dataclass(frozen=True)
class Everyone:
    """Every current member: the side that entered a segment just made with its members."""

    count: int


# One side of a membership change: the ids in hand, staged, every member, or a count of 0.
Side = Sequence[int] | Staged | Everyone | int


@dataclass
class MembershipChange:
    segment_id: uuid.UUID
    # Customer ids, or None when only the counts are known.
    entered: list[int] | None
    exited: list[int] | None

    @classmethod
    def of(cls, segment_id: uuid.UUID, entered: Side, exited: Side) -> "MembershipChange":
        """From ids, or counts where the ids are not at hand (in SQL); a count of 0 names
        nobody, which is known."""

        def ids(side: Side) -> list[int] | None:
            if isinstance(side, Staged | Everyone):
                return None
            if isinstance(side, int):
                return [] if side == 0 else None
            return list(side)

        return cls(segment_id, ids(entered), ids(exited))

    @staticmethod
    def counts(entered: Side, exited: Side) -> tuple[int, int]:
        def count(side: Side) -> int:
            if isinstance(side, Staged | Everyone):
                return side.count
            return side if isinstance(side, int) else len(side)

        return count(entered), count(exited)

    @property
    def named(self) -> bool:
        return self.customers is not None

    @property
    def customers(self) -> list[int] | None:
        """Everyone who entered or left, when known and not too many to name."""
        if self.entered is None or self.exited is None:
            return None
        if len(self.entered) + len(self.exited) > MAX_NAMED:
            return None
        return sorted({*self.entered, *self.exited})


@dataclass
class Changes:
    """What happened in one unit of work, written by `flush()` before it commits."""

    conn: AsyncConnection
    # The service whose unit of work this is: the `source` of the events made here.
    source: str
    events: list[CloudEvent] = field(default_factory=list)
    customers: dict[CustomerChange, set[int]] = field(default_factory=dict)
    memberships: list[MembershipChange] = field(default_factory=list)
    recompute: set[uuid.UUID] = field(default_factory=set)

    def publish(self, *events: CloudEvent) -> None:
        self.events.extend(events)

    def customers_changed(self, what: CustomerChange, ids: Collection[int]) -> None:
        if ids:
            self.customers.setdefault(what, set()).update(ids)

    def segment_created(self, segment_id: uuid.UUID) -> None:
        """A new segment: its KPIs are computed whole (it may start with members)."""
        self.recompute.add(segment_id)

    async def members_changed(
        self,
        segment_id: uuid.UUID,
        *,
        entered: Side,
        exited: Side,
        cause: str,
    ) -> int | None:
        """Customers entered or left the segment (see `Side`; a bare count other than 0
        names nobody, for callers that cannot know who). Moves the count and version,
        records the history entry and writes the events naming them, in parts; the caller
        holds the segment's lock. Returns the new membership version (None when nothing
        changed)."""
        change = MembershipChange.of(segment_id, entered, exited)
        entered_n, exited_n = change.counts(entered, exited)
        if not entered_n and not exited_n:
            return None
        # The events published before this one keep their place in the outbox.
        await self._write_events()
        parts = max(-(-entered_n // MAX_IDS_PER_EVENT), -(-exited_n // MAX_IDS_PER_EVENT), 1)
        template = SegmentMembersChanged(
            source=self.source,
            subject=str(segment_id),
            data=MembersChanged(
                segment_id=segment_id,
                added=entered_n,
                removed=exited_n,
                membership_version=0,
                cause=cause,
                parts=parts,
            ),
        )
        driver = await driver_connection(self.conn)
        version = await driver.fetchval(
            _record_membership(_side_sql(entered, True), _side_sql(exited, False)),
            segment_id,
            entered_n,
            exited_n,
            cause,
            current_correlation_id(),
            template.model_dump_json(),
            parts,
            list(entered) if _in_hand(entered) else None,  # type: ignore[arg-type]
            list(exited) if _in_hand(exited) else None,  # type: ignore[arg-type]
        )
        self.memberships.append(change)
        return int(version)

    async def _write_events(self) -> None:
        if self.events:
            driver = await driver_connection(self.conn)
            await driver.execute(
                _INSERT_EVENTS,
                [event.id for event in self.events],
                [event.type for event in self.events],
                [event.model_dump_json() for event in self.events],
            )
            self.events.clear()

    async def flush(self) -> None:
        """Write the consequences, in the caller's transaction (just before it commits): one
        statement, one round trip."""
        metric_rows = self._metric_rows(current_correlation_id())
        signal_rows = self._signal_rows()
        if metric_rows or signal_rows or self.events:
            driver = await driver_connection(self.conn)
            await driver.execute(
                _INSERT_ALL,
                json.dumps(
                    [dict(zip(_METRIC_FIELDS, row, strict=True)) for row in metric_rows],
                    default=str,
                ),
                json.dumps(
                    [dict(zip(_SIGNAL_FIELDS, row, strict=True)) for row in signal_rows],
                    default=str,
                ),
                [event.id for event in self.events],
                [event.type for event in self.events],
                [event.model_dump_json() for event in self.events],
            )
        self.events.clear()
        self.customers.clear()
        self.memberships.clear()
        self.recompute.clear()

    def _metric_rows(self, correlation: str | None) -> list[MetricsRow]:
        rows: list[MetricsRow] = []
        changed = set().union(*(ids for what, ids in self.customers.items() if what in _FOR_KPIS))
        if changed:
            rows.append((None, sorted(changed), None, None, False, correlation))
        for change in self.memberships:
            if change.named:
                rows.append(
                    (change.segment_id, None, change.entered, change.exited, False, correlation)
                )
            else:
                rows.append((change.segment_id, None, None, None, True, correlation))
        rows += [(segment_id, None, None, None, True, correlation) for segment_id in self.recompute]
        return rows

    def _signal_rows(self) -> list[tuple[str, uuid.UUID | None, list[int] | None]]:
        rows: list[tuple[str, uuid.UUID | None, list[int] | None]] = []
        orders = self.customers.get("orders", set())
        others = set().union(*(ids for what, ids in self.customers.items() if what != "orders"))
        if others:
            rows.append(("customers", None, sorted(others)))
        if orders:
            rows.append(("orders", None, sorted(orders)))
        for change in self.memberships:
            rows.append(("segment", change.segment_id, change.customers))
        return rows


def _in_hand(side: Side) -> bool:
    return not isinstance(side, Staged | Everyone | int)


# Each side's parts: (part from 0, external ids in customer id order). $1 is the segment, $8
# and $9 the ids in hand of each side.
_NUMBERED = f"""
    SELECT (row_number() OVER (ORDER BY c.id) - 1) / {MAX_IDS_PER_EVENT} AS part,
        c.id, c.external_id
    FROM customers c
"""


def _side_sql(side: Side, entered: bool) -> str:
    if isinstance(side, Staged):
        return (
            "SELECT part, ids FROM pg_temp.membership_parts "
            f"WHERE segment_id = $1 AND entered = {'true' if entered else 'false'}"
        )
    if isinstance(side, Everyone):
        source = "JOIN segment_members m ON m.customer_id = c.id WHERE m.segment_id = $1"
    elif isinstance(side, int):
        source = "WHERE false"
    else:
        source = f"WHERE c.id = ANY(${8 if entered else 9}::bigint[])"
    return (
        f"SELECT n.part, array_agg(n.external_id ORDER BY n.id) AS ids "
        f"FROM ({_NUMBERED} {source}) n GROUP BY n.part"
    )


def _record_membership(entered: str, exited: str) -> str:
    """The count, version and history entry, and the events (the template's `data` with the
    version, each part's ids and number), in one statement."""
    return f"""
    WITH given AS (SELECT $8::bigint[] AS entered, $9::bigint[] AS exited),
    moved AS (
        UPDATE segments
        SET member_count = member_count + $2 - $3, membership_version = membership_version + 1
        WHERE id = $1
        RETURNING id, membership_version, member_count
    ),
    logged AS (
        INSERT INTO segment_history
            (segment_id, membership_version, entered, exited, member_count, cause,
             correlation_id)
        SELECT id, membership_version, $2, $3, member_count, $4, $5 FROM moved
        RETURNING membership_version
    ),
    added AS ({entered}),
    removed AS ({exited}),
    events AS (
        SELECT gen_random_uuid() AS id, p.part, a.ids AS added_ids, r.ids AS removed_ids
        FROM generate_series(0, $7::int - 1) AS p(part)
        LEFT JOIN added a ON a.part = p.part
        LEFT JOIN removed r ON r.part = p.part
    ),
    written AS (
        INSERT INTO outbox (event_id, event_type, payload)
        SELECT e.id, 'segment.members_changed',
            $6::text::jsonb || jsonb_build_object(
                'id', e.id,
                'data', ($6::text::jsonb -> 'data') || jsonb_build_object(
                    'membership_version', l.membership_version,
                    'added_ids', coalesce(to_jsonb(e.added_ids), '[]'::jsonb),
                    'removed_ids', coalesce(to_jsonb(e.removed_ids), '[]'::jsonb),
                    'part', e.part + 1
                )
            )
        FROM events e CROSS JOIN logged l
        ORDER BY e.part
    )
    SELECT membership_version FROM logged
"""


# Parts staged by the statement that moved the customers (`stage_parts`), for
# `Changes.members_changed` to name them without their ids passing through Python. Dropped at
# commit.
_STAGE = """
    CREATE TEMPORARY TABLE IF NOT EXISTS membership_parts (
        segment_id uuid NOT NULL, entered boolean NOT NULL, part integer NOT NULL,
        ids text[] NOT NULL
    ) ON COMMIT DROP
"""
_PARTS = table(
    "membership_parts",
    column("segment_id", Uuid),
    column("entered", Boolean),
    column("part", Integer),
    column("ids", ARRAY(Text)),
    schema="pg_temp",
)


async def prepare_staging(conn: AsyncConnection) -> None:
    """Before a statement that stages parts: the table they go to, for this transaction."""
    driver = await driver_connection(conn)
    await driver.execute(_STAGE)


def stage_parts(segment_id: uuid.UUID, entered: bool, moved: Any) -> Insert:
    """An insert (for a CTE of the moving statement) staging the parts of `moved`, a
    selectable of moved `customer_id`s, as `Staged` names them."""
    customers = table("customers", column("id"), column("external_id"))
    numbered = (
        select(
            ((func.row_number().over(order_by=customers.c.id) - 1) // MAX_IDS_PER_EVENT).label(
                "part"
            ),
            customers.c.id,
            customers.c.external_id,
        )
        .join(moved, moved.c.customer_id == customers.c.id)
        .subquery("numbered")
    )
    parts: Select[Any] = select(
        literal(segment_id, Uuid),
        literal(entered),
        numbered.c.part,
        func.array_agg(aggregate_order_by(numbered.c.external_id, numbered.c.id)),
    ).group_by(numbered.c.part)
    return insert(_PARTS).from_select(["segment_id", "entered", "part", "ids"], parts)


def staged_parts_sql(segment: str, entered: bool, moved: str) -> str:
    """`stage_parts` as SQL text, for statements written by hand: `moved` names a relation
    of moved `customer_id`s, `segment` the segment id's parameter."""
    return f"""
        INSERT INTO pg_temp.membership_parts (segment_id, entered, part, ids)
        SELECT {segment}, {"true" if entered else "false"}, n.part,
            array_agg(n.external_id ORDER BY n.id)
        FROM (
            {_NUMBERED} JOIN {moved} moved ON moved.customer_id = c.id
        ) n
        GROUP BY n.part
    """


_METRIC_FIELDS = ("segment_id", "customer_ids", "entered", "exited", "whole", "correlation_id")
_SIGNAL_FIELDS = ("kind", "segment_id", "customer_ids")
# The three tables a change feeds, insert-only. Outbox rows keep the order of the events.
_INSERT_ALL = """
    WITH metrics AS (
        INSERT INTO metrics_changes
            (segment_id, customer_ids, entered, exited, whole, correlation_id)
        SELECT * FROM jsonb_to_recordset($1::text::jsonb) AS r(
            segment_id uuid, customer_ids bigint[], entered bigint[], exited bigint[],
            whole boolean, correlation_id text)
    ), signals AS (
        INSERT INTO segment_refresh_signals (kind, segment_id, customer_ids)
        SELECT * FROM jsonb_to_recordset($2::text::jsonb) AS r(
            kind text, segment_id uuid, customer_ids bigint[])
    )
    INSERT INTO outbox (event_id, event_type, payload)
    SELECT e.event_id, e.event_type, e.payload::jsonb
    FROM unnest($3::uuid[], $4::text[], $5::text[]) WITH ORDINALITY
        AS e(event_id, event_type, payload, position)
    ORDER BY e.position
"""
_INSERT_EVENTS = """
    INSERT INTO outbox (event_id, event_type, payload)
    SELECT e.event_id, e.event_type, e.payload::jsonb
    FROM unnest($1::uuid[], $2::text[], $3::text[]) WITH ORDINALITY
        AS e(event_id, event_type, payload, position)
    ORDER BY e.position
"""

_units: "weakref.WeakKeyDictionary[AsyncConnection, Changes]" = weakref.WeakKeyDictionary()


def changes_of(conn: AsyncConnection) -> Changes:
    """The change record of the unit of work running on this connection."""
    try:
        return _units[conn]
    except KeyError:
        raise RuntimeError("this connection is not in a unit of work") from None


@asynccontextmanager
async def recording(conn: AsyncConnection, source: str) -> AsyncIterator[Changes]:
    """Record changes on a connection already in a transaction; written when the block ends
    without an error (the caller then commits)."""
    changes = Changes(conn, source)
    _units[conn] = changes
    try:
        yield changes
        await changes.flush()
    finally:
        _units.pop(conn, None)


@asynccontextmanager
async def unit_of_work(engine: AsyncEngine, source: str) -> AsyncIterator[AsyncConnection]:
    """A transaction whose recorded changes are written just before it commits."""
    async with engine.begin() as conn, recording(conn, source):
        yield conn


# For SQL that writes the same consequences inside one statement (the single-statement PUT
# of a customer): the tables and columns `flush` writes.
INSERT_METRICS_CHANGE = (
    "INSERT INTO metrics_changes (segment_id, customer_ids, entered, exited, whole, correlation_id)"
)
INSERT_REFRESH_SIGNAL = "INSERT INTO segment_refresh_signals (kind, segment_id, customer_ids)"
INSERT_EVENT = "INSERT INTO outbox (event_id, event_type, payload)"

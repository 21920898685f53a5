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

A membership change also moves the segment's `member_count` and `membership_version` and
adds a history entry at once (the caller holds the segment's lock, so these rows are not
contended), so that reads later in the same transaction see them.
"""

import json
import uuid
import weakref
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segments_shared.db.engine import driver_connection
from segments_shared.events import CloudEvent, MembersChanged, SegmentMembersChanged
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


@dataclass
class MembershipChange:
    segment_id: uuid.UUID
    # Customer ids, or None when only the counts are known.
    entered: list[int] | None
    exited: list[int] | None

    @classmethod
    def of(
        cls, segment_id: uuid.UUID, entered: Sequence[int] | int, exited: Sequence[int] | int
    ) -> "MembershipChange":
        """From ids, or counts where the ids are not at hand; a count of 0 names nobody,
        which is known."""

        def ids(side: Sequence[int] | int) -> list[int] | None:
            if isinstance(side, int):
                return [] if side == 0 else None
            return list(side)

        return cls(segment_id, ids(entered), ids(exited))

    @staticmethod
    def counts(entered: Sequence[int] | int, exited: Sequence[int] | int) -> tuple[int, int]:
        return (
            entered if isinstance(entered, int) else len(entered),
            exited if isinstance(exited, int) else len(exited),
        )

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
        entered: Sequence[int] | int,
        exited: Sequence[int] | int,
        cause: str,
    ) -> int | None:
        """Customers entered or left the segment (ids, or counts when the ids are not at
        hand). Moves the count and version, records the history entry and the event; the
        caller holds the segment's lock. Returns the new membership version (None when
        nothing changed)."""
        change = MembershipChange.of(segment_id, entered, exited)
        entered_n, exited_n = change.counts(entered, exited)
        if not entered_n and not exited_n:
            return None
        driver = await driver_connection(self.conn)
        row = await driver.fetchrow(
            _RECORD_MEMBERSHIP, segment_id, entered_n, exited_n, cause, current_correlation_id()
        )
        self.memberships.append(change)
        version = int(row["membership_version"])
        self.publish(
            SegmentMembersChanged(
                source=self.source,
                subject=str(segment_id),
                data=MembersChanged(
                    segment_id=segment_id,
                    added=entered_n,
                    removed=exited_n,
                    membership_version=version,
                    cause=cause,
                ),
            )
        )
        return version

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


_RECORD_MEMBERSHIP = """
    WITH moved AS (
        UPDATE segments
        SET member_count = member_count + $2 - $3, membership_version = membership_version + 1
        WHERE id = $1
        RETURNING id, membership_version, member_count
    )
    INSERT INTO segment_history
        (segment_id, membership_version, entered, exited, member_count, cause, correlation_id)
    SELECT id, membership_version, $2, $3, member_count, $4, $5 FROM moved
    RETURNING membership_version
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

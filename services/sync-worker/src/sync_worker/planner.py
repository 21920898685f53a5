"""What a run must send, computed in SQL once, when the run starts, into `sync_run_plan`.

A sync compares the segment's eligible members with what the destination holds by the
worker's record (`destination_members`), keyed by the lower-cased email for ESPs (so an
email change removes the old address) and by the store's customer id for commerce and
webhooks. The comparison runs in two steps, so that a small change to a large segment costs
one ordered pass, not a join on keys:

1. Candidates: the members and the record, merge-joined by customer (both are read in
   customer order from their indexes), keep the rows whose keys differ: members the record
   lacks, records whose member left or changed their email.
2. Of those, an addition is a key nobody holds yet, a removal a held key no eligible member
   has any more (index probes on the record and on customers), which keeps the plan exact
   when two customers share an email.

A promotion compares the source destination's record with the target's, by key.
The run reads the plan in `position` order and deletes each round's rows with its record.
"""

import uuid
from collections.abc import Awaitable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.types import AnyRow
from sync_worker.connectors.base import Capabilities, SyncMember

# Changes beyond this many rows refresh the planner's statistics at once.
LARGE_CHANGE = 10_000


@dataclass(frozen=True)
class Plan:
    planned_add: int
    planned_remove: int
    # Members the destination does not receive (ESPs: no email, or not subscribed).
    skipped_unreachable: int = 0
    # Read from the segment itself (a first sync) rather than from `sync_run_plan`.
    streamed: bool = False


@dataclass(frozen=True, slots=True)
class Round:
    """A round of the plan: members to add and to remove, and the position it reaches (the
    next round reads after it)."""

    adds: list[SyncMember]
    removes: list[SyncMember]
    last: int
    # Plan rows read, sent or not: a round whose additions all lapsed still moves on.
    read: int = 0

    def __bool__(self) -> bool:
        return self.read > 0


def _key(capabilities: Capabilities) -> str:
    return "c.email" if capabilities.member_key == "email" else "c.external_id"


def _eligible(capabilities: Capabilities, alias: str = "c") -> str:
    """Which members the destination receives (fixed SQL fragments, never user input)."""
    if capabilities.reachable_only:
        return f"{alias}.email IS NOT NULL AND {alias}.email_status = 'subscribed'"
    if capabilities.member_key == "email":
        return f"{alias}.email IS NOT NULL"
    return "TRUE"


def _candidates(capabilities: Capabilities) -> str:
    return f"""
        CREATE TEMP TABLE sync_candidates ON COMMIT DROP AS
        WITH eligible AS (
            SELECT m.customer_id, {_key(capabilities)} AS key
            FROM segment_members m JOIN customers c ON c.id = m.customer_id
            WHERE m.segment_id = :segment_id AND {_eligible(capabilities)}
        ),
        held AS (
            -- Ordered here, the planner reads it from the index instead of sorting it.
            SELECT customer_id, member_key AS key FROM destination_members
            WHERE destination_id = :destination_id AND segment_id = :segment_id
            ORDER BY customer_id
        )
        SELECT e.customer_id AS member_customer_id, e.key AS member_key, h.key AS held_key
        FROM eligible e FULL JOIN held h ON h.customer_id = e.customer_id
        WHERE e.key IS DISTINCT FROM h.key
    """


def _plan_statement(capabilities: Capabilities, removals: bool) -> str:
    customer_key = "c2.email" if capabilities.member_key == "email" else "c2.external_id"
    removal_rows = f"""
        UNION ALL
        SELECT CAST(:run_id AS uuid), 'remove', held_key, CAST(NULL AS bigint)
        FROM sync_candidates s
        WHERE held_key IS NOT NULL
          AND NOT EXISTS (
              SELECT 1 FROM customers c2
              JOIN segment_members m2
                ON m2.segment_id = :segment_id AND m2.customer_id = c2.id
              WHERE {customer_key} = s.held_key AND {_eligible(capabilities, "c2")})
    """
    return f"""
        WITH planned AS (
            INSERT INTO sync_run_plan (sync_run_id, operation, member_key, customer_id)
            SELECT CAST(:run_id AS uuid), 'add', member_key, min(member_customer_id)
            FROM sync_candidates s
            WHERE member_key IS NOT NULL
              AND NOT EXISTS (
                  SELECT 1 FROM destination_members d
                  WHERE d.destination_id = :destination_id AND d.segment_id = :segment_id
                    AND d.member_key = s.member_key)
            GROUP BY member_key
            {removal_rows if removals else ""}
            RETURNING operation
        )
        SELECT count(*) FILTER (WHERE operation = 'add') AS planned_add,
               count(*) FILTER (WHERE operation = 'remove') AS planned_remove
        FROM planned
    """


def _count_keys(capabilities: Capabilities) -> str:
    """A first sync's additions (distinct keys: customers sharing an email are one contact)
    and the members it sends nothing for. GROUP BY lets PostgreSQL hash the keys."""
    return f"""
        SELECT count(*) AS keys, CAST(coalesce(sum(members), 0) AS bigint) AS eligible,
               (SELECT count(*) FROM segment_members WHERE segment_id = :segment_id) AS members
        FROM (
            SELECT count(*) AS members
            FROM segment_members m JOIN customers c ON c.id = m.customer_id
            WHERE m.segment_id = :segment_id AND {_eligible(capabilities)}
            GROUP BY {_key(capabilities)}
        ) keyed
    """


# Eligible members, without a second pass over the segment's customers: every record row
# came out of the merge join once, either matching its member's key or as a candidate, so
# the members whose key matched are the record's rows minus its candidate rows.
_SIZES = text(
    """
    SELECT (SELECT count(*) FROM segment_members WHERE segment_id = :segment_id) AS members,
           (SELECT count(*) FROM destination_members
            WHERE destination_id = :destination_id AND segment_id = :segment_id) AS held
    """
)
_CHANGED = text(
    """
    SELECT count(*) FILTER (WHERE held_key IS NOT NULL) AS held_changed,
           count(*) FILTER (WHERE member_key IS NOT NULL) AS members_changed
    FROM sync_candidates
    """
)


_HOLDS_ANY = text(
    "SELECT EXISTS (SELECT 1 FROM destination_members "
    "WHERE destination_id = :destination_id AND segment_id = :segment_id)"
)


async def plan_sync(
    conn: AsyncConnection,
    run_id: uuid.UUID,
    segment_id: uuid.UUID,
    destination_id: uuid.UUID,
    capabilities: Capabilities,
    *,
    removals: bool,
    sizes: Awaitable[AnyRow] | None = None,
) -> Plan:
    """Write the run's plan, in the caller's transaction. `sizes` (the segment's and the
    record's row counts, `_SIZES`) may come from another connection, counted meanwhile."""
    params = {"run_id": run_id, "segment_id": segment_id, "destination_id": destination_id}
    await conn.execute(text("SET LOCAL work_mem = '64MB'"))
    await conn.execute(text("SET LOCAL jit = off"))
    if not (await conn.execute(_HOLDS_ANY, params)).scalar():
        # Nothing recorded: every eligible member is an addition, read straight from the
        # segment in rounds (no plan rows to write for what may be millions of members).
        counts = (await conn.execute(text(_count_keys(capabilities)), params)).one()
        return Plan(counts.keys, 0, _skipped(capabilities, counts.members - counts.eligible), True)
    # Merge joins over the indexes beat hashing two large sets that spill to disk.
    await conn.execute(text("SET LOCAL enable_hashjoin = off"))
    await conn.execute(text(_candidates(capabilities)), params)
    await conn.execute(text("RESET enable_hashjoin"))
    await conn.execute(text("ANALYZE sync_candidates"))
    changed = (await conn.execute(_CHANGED)).one()
    row = (await conn.execute(text(_plan_statement(capabilities, removals)), params)).one()
    counted = (
        await sizes if sizes is not None else await count_sizes(conn, segment_id, destination_id)
    )
    eligible = counted.held - changed.held_changed + changed.members_changed
    plan = Plan(
        row.planned_add, row.planned_remove, _skipped(capabilities, counted.members - eligible)
    )
    await analyze_if_large(conn, plan)
    return plan


async def count_sizes(
    conn: AsyncConnection, segment_id: uuid.UUID, destination_id: uuid.UUID
) -> AnyRow:
    params = {"segment_id": segment_id, "destination_id": destination_id}
    return (await conn.execute(_SIZES, params)).one()


def _skipped(capabilities: Capabilities, count: int) -> int:
    return max(0, count) if capabilities.reachable_only else 0


async def analyze_if_large(conn: AsyncConnection, plan: Plan) -> None:
    """A large plan changes the tables faster than autovacuum notices: give the planner
    the new sizes before the rounds start reading."""
    if plan.planned_add + plan.planned_remove >= LARGE_CHANGE:
        await conn.execute(text("ANALYZE sync_run_plan"))


@dataclass(frozen=True)
class SourceState:
    """A promotion's source as the plan saw it: its latest run, and whether it ever synced."""

    latest_status: str | None
    synced: bool

    @property
    def settled(self) -> bool:
        return self.synced and self.latest_status in ("succeeded", "partial")


async def plan_promotion(
    conn: AsyncConnection,
    run_id: uuid.UUID,
    segment_id: uuid.UUID,
    source_id: uuid.UUID,
    target_id: uuid.UUID,
) -> tuple[Plan, SourceState]:
    """The target must end with exactly the source's record: add what it lacks, remove the
    rest. One statement, so one snapshot: the record is copied only if, in that snapshot,
    the source's latest run succeeded and none is under way (else nothing is written)."""
    statement = text(
        """
        WITH source AS (
            SELECT ds.last_success_run_id IS NOT NULL AS synced,
                   (SELECT r.status FROM sync_runs r
                    WHERE r.segment_id = :segment_id AND r.destination_id = :source_id
                    ORDER BY r.seq DESC LIMIT 1) AS latest_status
            FROM destination_segments ds
            WHERE ds.segment_id = :segment_id AND ds.destination_id = :source_id
        ),
        settled AS (
            SELECT EXISTS (
                SELECT 1 FROM source
                WHERE synced AND latest_status IN ('succeeded', 'partial')) AS ok
        ),
        planned AS (
            INSERT INTO sync_run_plan (sync_run_id, operation, member_key, customer_id)
            SELECT CAST(:run_id AS uuid),
                   CASE WHEN s.member_key IS NULL THEN 'remove' ELSE 'add' END,
                   coalesce(s.member_key, t.member_key), s.customer_id
            FROM (SELECT member_key, customer_id FROM destination_members
                  WHERE destination_id = :source_id AND segment_id = :segment_id) s
            FULL JOIN (SELECT member_key FROM destination_members
                       WHERE destination_id = :target_id AND segment_id = :segment_id) t
              ON t.member_key = s.member_key
            WHERE (s.member_key IS NULL OR t.member_key IS NULL)
              AND (SELECT ok FROM settled)
            RETURNING operation
        )
        SELECT (SELECT latest_status FROM source) AS latest_status,
               coalesce((SELECT synced FROM source), false) AS synced,
               (SELECT count(*) FROM planned WHERE operation = 'add') AS planned_add,
               (SELECT count(*) FROM planned WHERE operation = 'remove') AS planned_remove
        """
    )
    row = (
        await conn.execute(
            statement,
            {
                "run_id": run_id,
                "segment_id": segment_id,
                "source_id": source_id,
                "target_id": target_id,
            },
        )
    ).one()
    plan = Plan(planned_add=row.planned_add, planned_remove=row.planned_remove)
    await analyze_if_large(conn, plan)
    return plan, SourceState(latest_status=row.latest_status, synced=bool(row.synced))


async def drop_plan(conn: AsyncConnection, run_id: uuid.UUID) -> None:
    await conn.execute(
        text("DELETE FROM sync_run_plan WHERE sync_run_id = :run_id"), {"run_id": run_id}
    )


# Read with asyncpg itself: a round is thousands of rows, and SQLAlchemy's rows cost several
# times asyncpg's records (docs/pitfalls.md#postgresql-asyncpg-and-sqlalchemy). Both
# statements run outside any transaction.
def _planned_round(capabilities: Capabilities) -> str:
    """The next plan rows. An addition is checked again against the customer as they are
    now: one who left the eligible members since the plan was written (unsubscribed during a
    long run, say) is not sent."""
    return f"""
        WITH page AS MATERIALIZED (
            SELECT position, operation, member_key, customer_id FROM sync_run_plan
            WHERE sync_run_id = $1 AND position > $2
            ORDER BY position
            LIMIT $3
        )
        SELECT p.position, p.operation, p.member_key, p.customer_id,
               c.external_id, c.email, c.first_name, c.last_name,
               coalesce({_eligible(capabilities)}, false) AS eligible
        FROM page p LEFT JOIN customers c ON c.id = p.customer_id
        ORDER BY p.position
    """


_HELD = """
    SELECT member_key, external_id, email, remote_member_id FROM destination_members
    WHERE destination_id = $1 AND segment_id = $2 AND member_key = ANY($3::text[])
"""


def _streamed_round(capabilities: Capabilities) -> str:
    """A first sync's next additions: the segment's eligible members in customer order, the
    customer id serving as the position."""
    return f"""
        SELECT m.customer_id AS position, 'add' AS operation, {_key(capabilities)} AS member_key,
               m.customer_id, c.external_id, c.email, c.first_name, c.last_name
        FROM segment_members m JOIN customers c ON c.id = m.customer_id
        WHERE m.segment_id = $1 AND m.customer_id > $2 AND {_eligible(capabilities)}
          -- Said of both sides, so that a merge join starts both scans there.
          AND c.id > $2
        ORDER BY m.customer_id
        LIMIT $3
    """


async def read_round(
    conn: AsyncConnection,
    run_id: uuid.UUID,
    segment_id: uuid.UUID,
    destination_id: uuid.UUID,
    capabilities: Capabilities,
    *,
    after: int,
    limit: int,
    streamed: bool = False,
) -> Round:
    """The next plan rows, with what a send needs: the customer's details for additions,
    what the record holds (ids, address) for removals."""
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    if streamed:
        rows = await driver.fetch(_streamed_round(capabilities), segment_id, after, limit)
    else:
        rows = await driver.fetch(_planned_round(capabilities), run_id, after, limit)
    removals = [row["member_key"] for row in rows if row["operation"] == "remove"]
    held = {}
    if removals:
        found = await driver.fetch(_HELD, destination_id, segment_id, removals)
        held = {row["member_key"]: row for row in found}
    by_email = capabilities.member_key == "email"
    adds: list[SyncMember] = []
    removes: list[SyncMember] = []
    for row in rows:
        operation, key, customer_id = row["operation"], row["member_key"], row["customer_id"]
        external_id, email = row["external_id"], row["email"]
        first, last = row["first_name"], row["last_name"]
        if operation == "add" and not (streamed or row["eligible"]):
            continue  # lapsed since the plan; the record keeps not holding them
        if operation == "add":
            external_id, email = (external_id, key) if by_email else (key, email)
            adds.append(SyncMember(key, external_id, email, first, last, None, customer_id))
        else:
            record = held.get(key)
            removes.append(
                SyncMember(
                    key,
                    (record["external_id"] if record else None) if by_email else key,
                    key if by_email else (record["email"] if record else None),
                    remote_member_id=record["remote_member_id"] if record else None,
                )
            )
    if streamed and by_email:
        # Two customers sharing an email are one contact: send it once per round.
        unique = {member.key: member for member in reversed(adds)}
        if len(unique) < len(adds):
            adds = list(reversed(unique.values()))
    return Round(adds, removes, rows[-1]["position"] if rows else after, len(rows))

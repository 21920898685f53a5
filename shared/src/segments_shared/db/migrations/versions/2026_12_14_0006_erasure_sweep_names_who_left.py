"""The sweep of a customer's memberships at their deletion (ones that raced an erasure, or a
deletion behind the API's back) publishes `segment.members_changed` like every other
membership change: per segment, the counts, the new version and who left by external id, in
parts of at most 1,000 (docs/events.md). The events are built in SQL, as the outbox payload
segments_shared.changes writes: the envelope of CloudEvents 1.0, source `segment-api`, no
correlation id (no request is known here).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-14 18:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The sweep of migration 0004, plus `parted` (who left each segment, numbered, in parts of
# 1,000) and `published` (one event per part).
_SWEEP = """
    CREATE OR REPLACE FUNCTION segment_members_leave_with_customers() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtext('segment_members.insert'));
        WITH gone AS (
            DELETE FROM segment_members m USING erased e
            WHERE m.customer_id = e.id
            RETURNING m.segment_id, m.customer_id, e.external_id
        ),
        counted AS (
            SELECT segment_id, count(*) AS exited, array_agg(customer_id) AS ids
            FROM gone GROUP BY segment_id
        ),
        changed AS (
            UPDATE segments s
            SET member_count = s.member_count - c.exited,
                membership_version = s.membership_version + 1
            FROM counted c
            WHERE s.id = c.segment_id
            RETURNING s.id, s.membership_version, s.member_count, c.exited, c.ids
        ),
        logged AS (
            INSERT INTO metrics_changes (segment_id, entered, exited)
            SELECT id, '{}'::bigint[], ids FROM changed
        ),
        signalled AS (
            INSERT INTO segment_refresh_signals (kind, segment_id, customer_ids)
            SELECT 'segment', id, ids FROM changed
        ),
        parted AS (
            SELECT n.segment_id, n.part, array_agg(n.external_id ORDER BY n.customer_id) AS ids
            FROM (
                SELECT segment_id, customer_id, external_id,
                    (row_number() OVER (PARTITION BY segment_id ORDER BY customer_id) - 1)
                        / 1000 AS part
                FROM gone
            ) n
            GROUP BY n.segment_id, n.part
        ),
        published AS (
            INSERT INTO outbox (event_id, event_type, payload)
            SELECT e.id, 'segment.members_changed', jsonb_build_object(
                'specversion', '1.0',
                'id', e.id,
                'source', 'segment-api',
                'type', 'segment.members_changed',
                'time', to_char(clock_timestamp() AT TIME ZONE 'UTC',
                                'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                'subject', c.id,
                'datacontenttype', 'application/json',
                'correlationid', NULL,
                'data', jsonb_build_object(
                    'segment_id', c.id,
                    'added', 0,
                    'removed', c.exited,
                    'membership_version', c.membership_version,
                    'cause', 'customer_erased',
                    'added_ids', '[]'::jsonb,
                    'removed_ids', to_jsonb(e.ids),
                    'part', e.part + 1,
                    'parts', (c.exited + 999) / 1000
                )
            )
            FROM changed c
            JOIN (SELECT gen_random_uuid() AS id, p.* FROM parted p) e ON e.segment_id = c.id
            ORDER BY c.id, e.part
        )
        INSERT INTO segment_history
            (segment_id, membership_version, entered, exited, member_count, cause)
        SELECT id, membership_version, 0, exited, member_count, 'customer_erased'
        FROM changed;
        RETURN NULL;
    END $$
"""

# Migration 0004's sweep, as it was (landed migrations never change).
_SWEEP_0004 = """
    CREATE OR REPLACE FUNCTION segment_members_leave_with_customers() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtext('segment_members.insert'));
        WITH gone AS (
            DELETE FROM segment_members m USING erased e
            WHERE m.customer_id = e.id
            RETURNING m.segment_id, m.customer_id
        ),
        counted AS (
            SELECT segment_id, count(*) AS exited, array_agg(customer_id) AS ids
            FROM gone GROUP BY segment_id
        ),
        changed AS (
            UPDATE segments s
            SET member_count = s.member_count - c.exited,
                membership_version = s.membership_version + 1
            FROM counted c
            WHERE s.id = c.segment_id
            RETURNING s.id, s.membership_version, s.member_count, c.exited, c.ids
        ),
        logged AS (
            INSERT INTO metrics_changes (segment_id, entered, exited)
            SELECT id, '{}'::bigint[], ids FROM changed
        ),
        signalled AS (
            INSERT INTO segment_refresh_signals (kind, segment_id, customer_ids)
            SELECT 'segment', id, ids FROM changed
        )
        INSERT INTO segment_history
            (segment_id, membership_version, entered, exited, member_count, cause)
        SELECT id, membership_version, 0, exited, member_count, 'customer_erased'
        FROM changed;
        RETURN NULL;
    END $$
"""


def upgrade() -> None:
    op.execute(_SWEEP)


def downgrade() -> None:
    op.execute(_SWEEP_0004)

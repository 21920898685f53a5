"""A customer's deletion that sweeps memberships (ones that raced an erasure, or a deletion
behind the API's back) marks the segments' KPIs stale too, as every other membership change
does: their customer counts and revenue changed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The new mark takes the changed segments in id order: rows locked in one order everywhere.
_MARK_STALE = """
            ,
            marked AS (
                INSERT INTO metrics_dirty_segments (segment_id)
                SELECT id FROM changed ORDER BY id
                ON CONFLICT (segment_id) DO UPDATE
                SET generation = metrics_dirty_segments.generation + 1
            )"""


def _sweep(mark_stale: bool) -> str:
    return f"""
        CREATE OR REPLACE FUNCTION segment_members_leave_with_customers() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock(hashtext('segment_members.insert'));
            WITH gone AS (
                DELETE FROM segment_members m USING erased e
                WHERE m.customer_id = e.id
                RETURNING m.segment_id
            ),
            counted AS (
                SELECT segment_id, count(*) AS exited FROM gone GROUP BY segment_id
            ),
            changed AS (
                UPDATE segments s
                SET member_count = s.member_count - c.exited,
                    membership_version = s.membership_version + 1
                FROM counted c
                WHERE s.id = c.segment_id
                RETURNING s.id, s.membership_version, s.member_count, c.exited
            ){_MARK_STALE if mark_stale else ""}
            INSERT INTO segment_history
                (segment_id, membership_version, entered, exited, member_count, cause)
            SELECT id, membership_version, 0, exited, member_count, 'customer_erased'
            FROM changed;
            RETURN NULL;
        END $$
    """


def upgrade() -> None:
    op.execute(_sweep(mark_stale=True))


def downgrade() -> None:
    op.execute(_sweep(mark_stale=False))

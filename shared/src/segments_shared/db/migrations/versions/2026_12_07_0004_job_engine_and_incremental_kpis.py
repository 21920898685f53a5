"""One job engine, and KPIs kept by deltas.

- `jobs` replaces `scheduled_jobs` and `segment_refreshes` (and carries sync runs' leases).
- Writes send no NOTIFY (their commits queued on one lock): the relay polls the outbox.
- The write path no longer updates staleness marks (`metrics_dirty_segments`, a row every
  order locked): it inserts what changed into `metrics_changes`, which the metrics-worker
  folds into per-customer figures (`customer_kpi_parts`) and per-segment sums.
- Rule-refresh signals name the customers that changed; `rule_refresh_pending` holds, per
  rule segment, the customers its next refresh re-evaluates.
- RFM keeps the quintile boundaries of its last full computation (`rfm_boundaries`), against
  which changed customers are scored at once.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 20:00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "payload",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("claimed_payload", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("generation", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("retry_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("segment_id", sa.UUID(), nullable=True),
        sa.Column("sync_run_id", sa.UUID(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["segment_id"],
            ["segments.id"],
            name=op.f("fk_jobs_segment_id_segments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sync_run_id"],
            ["sync_runs.id"],
            name=op.f("fk_jobs_sync_run_id_sync_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("queue", "key", name=op.f("pk_jobs")),
    )
    op.create_index(
        "ix_jobs_due",
        "jobs",
        ["queue", "due_at"],
        postgresql_where=sa.text("lease_owner IS NULL AND due_at IS NOT NULL"),
    )
    op.create_index(
        "ix_jobs_leased",
        "jobs",
        ["queue", "lease_expires_at"],
        postgresql_where=sa.text("lease_owner IS NOT NULL"),
    )
    op.create_index(
        "ix_jobs_segment_id",
        "jobs",
        ["segment_id"],
        postgresql_where=sa.text("segment_id IS NOT NULL"),
    )
    op.create_index(
        "ix_jobs_sync_run_id",
        "jobs",
        ["sync_run_id"],
        postgresql_where=sa.text("sync_run_id IS NOT NULL"),
    )
    # Waiting refreshes carry over; the RFM schedule is recreated by the metrics-worker.
    op.execute(
        """
        INSERT INTO jobs (queue, key, due_at, requested_at, payload, segment_id)
        SELECT 'rule_refresh', segment_id::text, least(due_at, now()), now(),
               jsonb_build_object('cause', cause, 'whole', true), segment_id
        FROM segment_refreshes
        """
    )
    op.drop_index("ix_segment_refreshes_due_at", table_name="segment_refreshes")
    op.drop_table("segment_refreshes")
    op.drop_table("scheduled_jobs")


def _metrics_changes() -> None:
    op.create_table(
        "metrics_changes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("segment_id", sa.UUID(), nullable=True),
        sa.Column("customer_ids", postgresql.ARRAY(sa.BigInteger()), nullable=True),
        sa.Column("entered", postgresql.ARRAY(sa.BigInteger()), nullable=True),
        sa.Column("exited", postgresql.ARRAY(sa.BigInteger()), nullable=True),
        sa.Column("whole", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("correlation_id", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metrics_changes")),
    )
    op.create_index(
        "ix_metrics_changes_segment_id",
        "metrics_changes",
        ["segment_id"],
        postgresql_where=sa.text("segment_id IS NOT NULL"),
    )
    op.create_table(
        "customer_kpi_parts",
        sa.Column("customer_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("reachable", sa.Boolean(), nullable=False),
        sa.Column("orders", sa.BigInteger(), nullable=False),
        sa.Column("revenue", sa.Numeric(20, 2), nullable=False),
        sa.Column("first_order_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_order_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_kpi_parts")),
    )
    op.add_column(
        "segment_kpis",
        sa.Column("order_gaps", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column(
        "segment_kpis",
        sa.Column("gap_seconds", sa.Numeric(), server_default="0", nullable=False),
    )
    op.create_table(
        "rfm_boundaries",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("buyers", sa.BigInteger(), nullable=False),
        sa.Column("recency_after", postgresql.ARRAY(sa.DateTime(timezone=True)), nullable=False),
        sa.Column("frequency_min", postgresql.ARRAY(sa.Numeric()), nullable=False),
        sa.Column("monetary_min", postgresql.ARRAY(sa.Numeric()), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_rfm_boundaries_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rfm_boundaries")),
    )
    # Every customer's figures as they stand, and every segment computed whole from them.
    op.execute(
        """
        INSERT INTO customer_kpi_parts
            (customer_id, reachable, orders, revenue, first_order_at, last_order_at)
        SELECT c.id, c.email IS NOT NULL AND c.email_status = 'subscribed',
               coalesce(o.orders, 0), coalesce(o.revenue, 0), o.first_at, o.last_at
        FROM customers c
        LEFT JOIN (
            SELECT customer_id, count(*) AS orders, sum(total) AS revenue,
                   min(placed_at) AS first_at, max(placed_at) AS last_at
            FROM orders WHERE status = 'placed' GROUP BY customer_id
        ) o ON o.customer_id = c.id
        """
    )
    op.execute("ANALYZE customer_kpi_parts")
    op.execute(
        "INSERT INTO metrics_changes (segment_id, whole) SELECT id, true FROM segments ORDER BY id"
    )
    op.drop_index("ix_metrics_dirty_segments_marked_at", table_name="metrics_dirty_segments")
    op.drop_table("metrics_dirty_segments")
    op.execute("DROP FUNCTION IF EXISTS metrics_dirty_segments_changed_at()")


def _refresh_signals() -> None:
    op.add_column(
        "segment_refresh_signals",
        sa.Column("customer_ids", postgresql.ARRAY(sa.BigInteger()), nullable=True),
    )
    op.drop_constraint(
        op.f("ck_segment_refresh_signals_kind"), "segment_refresh_signals", type_="check"
    )
    op.create_check_constraint(
        op.f("ck_segment_refresh_signals_kind"),
        "segment_refresh_signals",
        "kind IN ('customers', 'orders', 'segment', 'rfm')",
    )
    # Insert-only, like every table the signals feed: a row per fold of signals, so that a
    # fold never waits for a refresh that took the same customers.
    op.create_table(
        "rule_refresh_pending",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("segment_id", sa.UUID(), nullable=False),
        sa.Column("customer_ids", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.ForeignKeyConstraint(
            ["segment_id"],
            ["segments.id"],
            name=op.f("fk_rule_refresh_pending_segment_id_segments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rule_refresh_pending")),
    )
    op.create_index("ix_rule_refresh_pending_segment_id", "rule_refresh_pending", ["segment_id"])


# A customer's deletion sweeps memberships that raced it (or a deletion behind the API's
# back); like every membership change, the exits are recorded for the KPIs and the rules.
_SWEEP = """
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


def _sync_runs() -> None:
    """Runs queued or in flight become jobs (with their attempts); their leases live there.
    A run keeps `attempts` as of its latest claim, for the record."""
    op.execute(
        """
        INSERT INTO jobs (queue, key, due_at, requested_at, sync_run_id, attempts)
        SELECT 'sync_run', id::text, now(), now(), id, attempts FROM sync_runs
        WHERE status IN ('queued', 'running')
        """
    )
    op.drop_index(
        "ix_sync_runs_lease",
        table_name="sync_runs",
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.drop_column("sync_runs", "lease_owner")
    op.drop_column("sync_runs", "lease_expires_at")


def _no_notify_on_writes() -> None:
    """Writers no longer send NOTIFY: PostgreSQL queues every notifying transaction's commit on
    one lock, which a stream of writes turned into a line. The relay polls instead."""
    op.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox")
    op.execute("DROP FUNCTION IF EXISTS notify_outbox()")


def upgrade() -> None:
    _no_notify_on_writes()
    _jobs()
    _sync_runs()
    _metrics_changes()
    _refresh_signals()
    op.execute(_SWEEP)


def _revision_0002() -> ModuleType:
    """Migration 0002, whose sweep the downgrade puts back (landed migrations never change)."""
    path = Path(__file__).with_name("2026_11_25_0002_erasure_sweep_marks_kpis_stale.py")
    spec = importlib.util.spec_from_file_location("segments_migration_0002", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def downgrade() -> None:
    """Back to marks and per-table queues; queued refreshes carry back, KPIs are marked for
    recomputation."""
    op.create_table(
        "metrics_dirty_segments",
        sa.Column("segment_id", sa.UUID(), nullable=False),
        sa.Column("generation", sa.BigInteger(), server_default="1", nullable=False),
        sa.Column(
            "marked_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.Text(), nullable=True),
        sa.Column("correlation_id", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["segment_id"],
            ["segments.id"],
            name=op.f("fk_metrics_dirty_segments_segment_id_segments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("segment_id", name=op.f("pk_metrics_dirty_segments")),
    )
    op.create_index("ix_metrics_dirty_segments_marked_at", "metrics_dirty_segments", ["marked_at"])
    op.execute(
        """
        CREATE FUNCTION metrics_dirty_segments_changed_at() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' AND NEW.generation = OLD.generation THEN
                RETURN NEW;
            END IF;
            NEW.changed_at := clock_timestamp();
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER metrics_dirty_segments_changed_at "
        "BEFORE INSERT OR UPDATE ON metrics_dirty_segments "
        "FOR EACH ROW EXECUTE FUNCTION metrics_dirty_segments_changed_at()"
    )
    op.execute("INSERT INTO metrics_dirty_segments (segment_id) SELECT id FROM segments")
    op.execute(_revision_0002()._sweep(mark_stale=True))
    op.create_table(
        "segment_refreshes",
        sa.Column("segment_id", sa.UUID(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("generation", sa.BigInteger(), server_default="1", nullable=False),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["segment_id"],
            ["segments.id"],
            name=op.f("fk_segment_refreshes_segment_id_segments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("segment_id", name=op.f("pk_segment_refreshes")),
    )
    op.create_index("ix_segment_refreshes_due_at", "segment_refreshes", ["due_at"])
    op.execute(
        """
        INSERT INTO segment_refreshes (segment_id, due_at, cause)
        SELECT segment_id, coalesce(due_at, now()), coalesce(payload->>'cause', 'migrated')
        FROM jobs WHERE queue = 'rule_refresh' AND segment_id IS NOT NULL
        """
    )
    op.create_table(
        "scheduled_jobs",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.Text(), nullable=True),
        sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduled_jobs")),
    )
    op.drop_index("ix_rule_refresh_pending_segment_id", table_name="rule_refresh_pending")
    op.drop_table("rule_refresh_pending")
    op.execute("DELETE FROM segment_refresh_signals WHERE kind = 'rfm'")
    op.drop_constraint(
        op.f("ck_segment_refresh_signals_kind"), "segment_refresh_signals", type_="check"
    )
    op.create_check_constraint(
        op.f("ck_segment_refresh_signals_kind"),
        "segment_refresh_signals",
        "kind IN ('customers', 'orders', 'segment')",
    )
    op.drop_column("segment_refresh_signals", "customer_ids")
    op.drop_table("rfm_boundaries")
    op.drop_column("segment_kpis", "gap_seconds")
    op.drop_column("segment_kpis", "order_gaps")
    op.drop_table("customer_kpi_parts")
    op.execute(
        """
        CREATE FUNCTION notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('segments_outbox', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_notify AFTER INSERT ON outbox "
        "FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox()"
    )
    op.drop_index("ix_metrics_changes_segment_id", table_name="metrics_changes")
    op.drop_table("metrics_changes")
    op.add_column("sync_runs", sa.Column("lease_owner", sa.Text(), nullable=True))
    op.add_column(
        "sync_runs", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        "ix_sync_runs_lease",
        "sync_runs",
        ["lease_expires_at"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.execute(
        """
        UPDATE sync_runs r SET attempts = j.attempts, lease_owner = j.lease_owner,
            lease_expires_at = j.lease_expires_at
        FROM jobs j WHERE j.queue = 'sync_run' AND j.sync_run_id = r.id
        """
    )
    op.drop_index("ix_jobs_sync_run_id", table_name="jobs")
    op.drop_index("ix_jobs_segment_id", table_name="jobs")
    op.drop_index("ix_jobs_leased", table_name="jobs")
    op.drop_index("ix_jobs_due", table_name="jobs")
    op.drop_table("jobs")

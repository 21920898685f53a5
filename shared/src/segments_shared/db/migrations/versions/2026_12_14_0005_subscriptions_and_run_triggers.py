"""Subscriptions: syncs that run themselves (SPEC §6.1), and what asked for each run.

- `subscriptions`: one per segment and destination, with its schedule, pause and next slot.
- `subscription_signals`: insert-only changes not yet folded into `on_change` subscriptions'
  jobs, copied by a statement trigger from `segment_refresh_signals`, into which every
  writer of memberships and customers already inserts in its transaction (changes.py, the
  single-statement customer PUT, the erasure trigger). The copy is made only while an
  `on_change` subscription exists.
- `sync_runs.trigger` (`manual`, `change`, `schedule`, `promotion`; promotions backfilled)
  and `sync_runs.subscription_id`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-14 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COPY_SIGNALS = """
    CREATE FUNCTION copy_subscription_signals() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM subscriptions WHERE schedule->>'mode' = 'on_change') THEN
            INSERT INTO subscription_signals (kind, segment_id, customer_ids)
            SELECT kind, segment_id, customer_ids FROM inserted
            WHERE kind IN ('customers', 'segment');
        END IF;
        RETURN NULL;
    END $$
"""


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("segment_id", sa.UUID(), nullable=False),
        sa.Column("destination_id", sa.UUID(), nullable=False),
        sa.Column("schedule", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("paused_reason", sa.Text(), nullable=True),
        sa.Column("auth_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("change_pending", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "paused_reason IN ('auth_failed')", name=op.f("ck_subscriptions_paused_reason")
        ),
        sa.ForeignKeyConstraint(
            ["destination_id"],
            ["destinations.id"],
            name=op.f("fk_subscriptions_destination_id_destinations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["segment_id"],
            ["segments.id"],
            name=op.f("fk_subscriptions_segment_id_segments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint(
            "segment_id", "destination_id", name=op.f("uq_subscriptions_segment_id_destination_id")
        ),
    )
    op.create_index(
        op.f("ix_subscriptions_destination_id"), "subscriptions", ["destination_id"], unique=False
    )
    op.create_table(
        "subscription_signals",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("segment_id", sa.UUID(), nullable=True),
        sa.Column("customer_ids", postgresql.ARRAY(sa.BigInteger()), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "kind IN ('customers', 'segment')", name=op.f("ck_subscription_signals_kind")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_signals")),
    )
    op.execute(_COPY_SIGNALS)
    op.execute(
        """
        CREATE TRIGGER segment_refresh_signals_copy_subscription_signals
        AFTER INSERT ON segment_refresh_signals
        REFERENCING NEW TABLE AS inserted
        FOR EACH STATEMENT EXECUTE FUNCTION copy_subscription_signals()
        """
    )
    op.add_column(
        "sync_runs", sa.Column("trigger", sa.Text(), server_default="manual", nullable=False)
    )
    op.add_column("sync_runs", sa.Column("subscription_id", sa.UUID(), nullable=True))
    # Every run so far was asked for through the API: a sync by hand, or a promotion.
    op.execute("UPDATE sync_runs SET trigger = 'promotion' WHERE kind = 'promotion'")
    op.create_check_constraint(
        op.f("ck_sync_runs_trigger"),
        "sync_runs",
        "trigger IN ('manual', 'change', 'schedule', 'promotion')",
    )
    op.create_index(
        "ix_sync_runs_subscription_id_seq",
        "sync_runs",
        ["subscription_id", "seq"],
        unique=False,
        postgresql_where=sa.text("subscription_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_sync_runs_subscription_id_seq",
        table_name="sync_runs",
        postgresql_where=sa.text("subscription_id IS NOT NULL"),
    )
    op.drop_constraint(op.f("ck_sync_runs_trigger"), "sync_runs", type_="check")
    op.drop_column("sync_runs", "subscription_id")
    op.drop_column("sync_runs", "trigger")
    op.execute(
        "DROP TRIGGER segment_refresh_signals_copy_subscription_signals ON segment_refresh_signals"
    )
    op.execute("DROP FUNCTION copy_subscription_signals()")
    op.drop_table("subscription_signals")
    op.drop_index(op.f("ix_subscriptions_destination_id"), table_name="subscriptions")
    op.drop_table("subscriptions")

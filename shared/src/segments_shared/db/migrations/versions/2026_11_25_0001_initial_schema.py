"""Initial schema: every table of the product, the outbox wake-up trigger and the default
segments (SPEC section 5).

Revision ID: 0001
Revises:
Create Date: 2026-11-25 06:04:31.200249
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from segments_shared.db.ids import uuid7

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


DEFAULT_SEGMENTS = [
    (
        "All customers",
        "Every customer of the store.",
        {"field": "created_at", "op": "exists"},
    ),
    (
        "Email subscribers",
        "Customers with an email who subscribed.",
        {
            "all": [
                {"field": "email", "op": "exists"},
                {"field": "email_status", "op": "eq", "value": "subscribed"},
            ]
        },
    ),
    (
        "One-time buyers",
        "Customers with exactly one placed order.",
        {"field": "orders_count", "op": "eq", "value": 1},
    ),
    (
        "Repeat buyers",
        "Customers with two or more placed orders.",
        {"field": "orders_count", "op": "gte", "value": 2},
    ),
    (
        "Lapsed customers",
        "Customers with no order in the last 180 days and at least one before.",
        {"field": "last_order_at", "op": "before_last_days", "value": 180},
    ),
]


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("key_prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "customers",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("external_id", sa.String(length=128), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("first_name", sa.Text(), nullable=True),
        sa.Column("last_name", sa.Text(), nullable=True),
        sa.Column("email_status", sa.Text(), server_default="pending", nullable=False),
        sa.Column(
            "attributes",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="{}",
            nullable=False,
        ),
        sa.Column("shipping_address", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("billing_address", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "email_status IN ('subscribed', 'unsubscribed', 'cleaned', 'pending')",
            name=op.f("ck_customers_email_status"),
        ),
        sa.CheckConstraint("email = lower(email)", name=op.f("ck_customers_email_lower")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
        sa.UniqueConstraint("external_id", name=op.f("uq_customers_external_id")),
    )
    op.create_index(op.f("ix_customers_email"), "customers", ["email"], unique=False)
    op.create_table(
        "destinations",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("config", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("secrets", sa.LargeBinary(), nullable=False),
        sa.Column("account_key", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "type IN ('mailchimp', 'sendgrid', 'klaviyo', 'webhook', 'commerce')",
            name=op.f("ck_destinations_type"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_destinations")),
    )
    op.create_index(
        "ix_destinations_created_at_id", "destinations", ["created_at", "id"], unique=False
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("api_key_id", sa.UUID(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("method", sa.String(length=10), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response_headers", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("response_body", sa.LargeBinary(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("api_key_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(
        op.f("ix_idempotency_keys_created_at"), "idempotency_keys", ["created_at"], unique=False
    )
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.Text(), nullable=False),
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column(
            "processed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("consumer", "event_id", name=op.f("pk_inbox")),
    )
    op.create_index(op.f("ix_inbox_processed_at"), "inbox", ["processed_at"], unique=False)
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbox_event_id")),
    )
    op.create_index("ix_outbox_published_at", "outbox", ["published_at"], unique=False)
    op.create_index(
        "ix_outbox_unpublished",
        "outbox",
        ["id"],
        unique=False,
        postgresql_where=sa.text("published_at IS NULL"),
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
    op.create_table(
        "segments",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("kind", sa.Text(), server_default="user", nullable=False),
        sa.Column(
            "definition",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text('\'{"type": "manual"}\'::jsonb'),
            nullable=False,
        ),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("status", sa.Text(), server_default="ready", nullable=False),
        sa.Column("member_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("membership_version", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('default', 'user', 'custom')", name=op.f("ck_segments_kind")),
        sa.CheckConstraint("status IN ('ready', 'building')", name=op.f("ck_segments_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segments")),
    )
    op.create_index("ix_segments_created_at_id", "segments", ["created_at", "id"], unique=False)
    op.create_index(
        "uq_segments_lower_name", "segments", [sa.literal_column("lower(name)")], unique=True
    )
    op.create_table(
        "vendor_rate_windows",
        sa.Column("account_key", sa.Text(), nullable=False),
        sa.Column("window", sa.Text(), nullable=False),
        sa.Column(
            "sent_at",
            postgresql.ARRAY(sa.DateTime(timezone=True)),
            server_default="{}",
            nullable=False,
        ),
        sa.Column("blocked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("account_key", "window", name=op.f("pk_vendor_rate_windows")),
    )
    op.create_table(
        "customer_rfm",
        sa.Column("customer_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("last_order_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("frequency", sa.Integer(), nullable=False),
        sa.Column("monetary", sa.Numeric(precision=20, scale=2), nullable=False),
        sa.Column("recency_score", sa.SmallInteger(), nullable=False),
        sa.Column("frequency_score", sa.SmallInteger(), nullable=False),
        sa.Column("monetary_score", sa.SmallInteger(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_rfm")),
    )
    op.create_table(
        "destination_members",
        sa.Column("destination_id", sa.UUID(), nullable=False),
        sa.Column("segment_id", sa.UUID(), nullable=False),
        sa.Column("member_key", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.BigInteger(), nullable=True),
        sa.Column("external_id", sa.Text(), nullable=True),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("remote_member_id", sa.Text(), nullable=True),
        sa.Column(
            "synced_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint(
            "destination_id", "segment_id", "member_key", name=op.f("pk_destination_members")
        ),
    )
    op.create_index(
        "ix_destination_members_destination_id_segment_id_customer_id",
        "destination_members",
        ["destination_id", "segment_id", "customer_id"],
        unique=False,
        postgresql_include=["member_key"],
    )
    op.create_table(
        "destination_segments",
        sa.Column("segment_id", sa.UUID(), nullable=False),
        sa.Column("destination_id", sa.UUID(), nullable=False),
        sa.Column("remote_id", sa.Text(), nullable=True),
        sa.Column("remote_name", sa.Text(), nullable=True),
        sa.Column("state", sa.Text(), server_default="queued", nullable=False),
        sa.Column("last_run_id", sa.UUID(), nullable=True),
        sa.Column("last_success_run_id", sa.UUID(), nullable=True),
        sa.Column("last_synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "state IN ('queued', 'syncing', 'synced', 'failed')",
            name=op.f("ck_destination_segments_state"),
        ),
        sa.ForeignKeyConstraint(
            ["destination_id"],
            ["destinations.id"],
            name=op.f("fk_destination_segments_destination_id_destinations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["segment_id"],
            ["segments.id"],
            name=op.f("fk_destination_segments_segment_id_segments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "segment_id", "destination_id", name=op.f("pk_destination_segments")
        ),
    )
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
        sa.ForeignKeyConstraint(
            ["segment_id"],
            ["segments.id"],
            name=op.f("fk_metrics_dirty_segments_segment_id_segments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("segment_id", name=op.f("pk_metrics_dirty_segments")),
    )
    op.create_index(
        "ix_metrics_dirty_segments_marked_at", "metrics_dirty_segments", ["marked_at"], unique=False
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("external_id", sa.String(length=128), nullable=False),
        sa.Column("customer_id", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Numeric(precision=14, scale=2), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('placed', 'cancelled', 'refunded')", name=op.f("ck_orders_status")
        ),
        sa.CheckConstraint("total >= 0", name=op.f("ck_orders_total_not_negative")),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_orders_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("external_id", name=op.f("uq_orders_external_id")),
    )
    op.create_index(
        "ix_orders_customer_id_placed_at",
        "orders",
        ["customer_id", "placed_at"],
        unique=False,
        postgresql_include=["status", "total"],
    )
    op.create_table(
        "segment_history",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("segment_id", sa.UUID(), nullable=False),
        sa.Column("membership_version", sa.BigInteger(), nullable=False),
        sa.Column("entered", sa.BigInteger(), nullable=False),
        sa.Column("exited", sa.BigInteger(), nullable=False),
        sa.Column("member_count", sa.BigInteger(), nullable=False),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("correlation_id", sa.Text(), nullable=True),
        sa.Column(
            "occurred_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["segment_id"],
            ["segments.id"],
            name=op.f("fk_segment_history_segment_id_segments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segment_history")),
    )
    op.create_index(
        "ix_segment_history_segment_id_id", "segment_history", ["segment_id", "id"], unique=False
    )
    op.create_table(
        "segment_kpis",
        sa.Column("segment_id", sa.UUID(), nullable=False),
        sa.Column("customers", sa.BigInteger(), nullable=False),
        sa.Column("reachable_customers", sa.BigInteger(), nullable=False),
        sa.Column("total_revenue", sa.Numeric(precision=20, scale=2), nullable=False),
        sa.Column("total_orders", sa.BigInteger(), nullable=False),
        sa.Column("average_order_value", sa.Numeric(precision=20, scale=2), nullable=True),
        sa.Column("customer_lifetime_value", sa.Numeric(precision=20, scale=2), nullable=True),
        sa.Column("order_latency_days", sa.Numeric(precision=14, scale=2), nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["segment_id"],
            ["segments.id"],
            name=op.f("fk_segment_kpis_segment_id_segments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("segment_id", name=op.f("pk_segment_kpis")),
    )
    op.create_table(
        "segment_members",
        sa.Column("segment_id", sa.UUID(), nullable=False),
        sa.Column("customer_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "added_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        # No foreign keys (see the model): the triggers at the end keep the cascades.
        sa.PrimaryKeyConstraint("segment_id", "customer_id", name=op.f("pk_segment_members")),
    )
    op.create_index(
        "ix_segment_members_customer_id", "segment_members", ["customer_id"], unique=False
    )
    op.create_table(
        "segment_overrides",
        sa.Column("segment_id", sa.UUID(), nullable=False),
        sa.Column("customer_id", sa.BigInteger(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "mode IN ('include', 'exclude')", name=op.f("ck_segment_overrides_mode")
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_segment_overrides_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["segment_id"],
            ["segments.id"],
            name=op.f("fk_segment_overrides_segment_id_segments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("segment_id", "customer_id", name=op.f("pk_segment_overrides")),
    )
    op.create_index(
        "ix_segment_overrides_customer_id", "segment_overrides", ["customer_id"], unique=False
    )
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
    op.create_index("ix_segment_refreshes_due_at", "segment_refreshes", ["due_at"], unique=False)
    op.create_table(
        "segment_refresh_signals",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("segment_id", sa.UUID(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "kind IN ('customers', 'orders', 'segment')",
            name=op.f("ck_segment_refresh_signals_kind"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segment_refresh_signals")),
    )
    op.create_table(
        "sync_runs",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("kind", sa.Text(), server_default="sync", nullable=False),
        sa.Column("segment_id", sa.UUID(), nullable=False),
        sa.Column("destination_id", sa.UUID(), nullable=False),
        sa.Column("source_destination_id", sa.UUID(), nullable=True),
        sa.Column("status", sa.Text(), server_default="queued", nullable=False),
        sa.Column(
            "requested_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "stats",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text(
                '\'{"planned_add": 0, "planned_remove": 0, "added": 0, "removed": 0, '
                '"skipped_unreachable": 0, "failed_records": 0}\'::jsonb'
            ),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "checkpoint",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="{}",
            nullable=False,
        ),
        sa.Column("correlation_id", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.CheckConstraint("kind IN ('sync', 'promotion')", name=op.f("ck_sync_runs_kind")),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'partial', 'failed')",
            name=op.f("ck_sync_runs_status"),
        ),
        sa.ForeignKeyConstraint(
            ["destination_id"],
            ["destinations.id"],
            name=op.f("fk_sync_runs_destination_id_destinations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["segment_id"],
            ["segments.id"],
            name=op.f("fk_sync_runs_segment_id_segments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["source_destination_id"],
            ["destinations.id"],
            name=op.f("fk_sync_runs_source_destination_id_destinations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_runs")),
        sa.UniqueConstraint("seq", name=op.f("uq_sync_runs_seq")),
    )
    op.create_index(
        "ix_sync_runs_lease",
        "sync_runs",
        ["lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.create_index(
        "ix_sync_runs_segment_id_requested_at",
        "sync_runs",
        ["segment_id", "requested_at"],
        unique=False,
    )
    op.create_index(
        "uq_sync_runs_active",
        "sync_runs",
        ["segment_id", "destination_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.create_table(
        "sync_run_failures",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("sync_run_id", sa.UUID(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("operation", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "occurred_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["sync_run_id"],
            ["sync_runs.id"],
            name=op.f("fk_sync_run_failures_sync_run_id_sync_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_run_failures")),
    )
    op.create_index(
        op.f("ix_sync_run_failures_sync_run_id"), "sync_run_failures", ["sync_run_id"], unique=False
    )
    op.create_table(
        "sync_run_plan",
        sa.Column("sync_run_id", sa.UUID(), nullable=False),
        sa.Column("position", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("operation", sa.Text(), nullable=False),
        sa.Column("member_key", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "operation IN ('add', 'remove')", name=op.f("ck_sync_run_plan_operation")
        ),
        sa.ForeignKeyConstraint(
            ["sync_run_id"],
            ["sync_runs.id"],
            name=op.f("fk_sync_run_plan_sync_run_id_sync_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sync_run_id", "position", name=op.f("pk_sync_run_plan")),
    )
    # Wake the relays when events are written; NOTIFY is delivered at commit.
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
    # A staleness mark keeps the time of its latest change (every writer bumps `generation`),
    # so the metrics-worker can wait for a burst of changes to pause before recomputing.
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
    # The cascades of segment_members, which has no foreign keys (see the model). A customer's
    # deletion first waits for set-based membership inserts in flight (they hold this lock
    # shared and insert only customers that still exist), then sweeps; memberships it finds
    # here raced an erasure, and leave with an exact count and a history entry.
    op.execute(
        """
        CREATE FUNCTION segment_members_leave_with_customers() RETURNS trigger
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
            )
            INSERT INTO segment_history
                (segment_id, membership_version, entered, exited, member_count, cause)
            SELECT id, membership_version, 0, exited, member_count, 'customer_erased'
            FROM changed;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER customers_leave_segments AFTER DELETE ON customers "
        "REFERENCING OLD TABLE AS erased "
        "FOR EACH STATEMENT EXECUTE FUNCTION segment_members_leave_with_customers()"
    )
    op.execute(
        """
        CREATE FUNCTION segment_members_leave_with_segments() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM segment_members m USING removed r WHERE m.segment_id = r.id;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER segments_drop_members AFTER DELETE ON segments "
        "REFERENCING OLD TABLE AS removed "
        "FOR EACH STATEMENT EXECUTE FUNCTION segment_members_leave_with_segments()"
    )
    segments = sa.table(
        "segments",
        sa.column("id", sa.UUID),
        sa.column("name", sa.String),
        sa.column("description", sa.Text),
        sa.column("kind", sa.Text),
        sa.column("definition", postgresql.JSONB),
    )
    op.bulk_insert(
        segments,
        [
            {
                "id": uuid7(),
                "name": name,
                "description": description,
                "kind": "default",
                "definition": {"type": "rule", "rule": rule},
            }
            for name, description, rule in DEFAULT_SEGMENTS
        ],
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox")
    op.execute("DROP FUNCTION IF EXISTS notify_outbox()")
    op.execute("DROP TRIGGER IF EXISTS metrics_dirty_segments_changed_at ON metrics_dirty_segments")
    op.execute("DROP FUNCTION IF EXISTS metrics_dirty_segments_changed_at()")
    op.execute("DROP TRIGGER IF EXISTS customers_leave_segments ON customers")
    op.execute("DROP FUNCTION IF EXISTS segment_members_leave_with_customers()")
    op.execute("DROP TRIGGER IF EXISTS segments_drop_members ON segments")
    op.execute("DROP FUNCTION IF EXISTS segment_members_leave_with_segments()")
    op.drop_table("segment_refresh_signals")
    op.drop_table("sync_run_plan")
    op.drop_index(op.f("ix_sync_run_failures_sync_run_id"), table_name="sync_run_failures")
    op.drop_table("sync_run_failures")
    op.drop_index(
        "uq_sync_runs_active",
        table_name="sync_runs",
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.drop_index("ix_sync_runs_segment_id_requested_at", table_name="sync_runs")
    op.drop_index(
        "ix_sync_runs_lease",
        table_name="sync_runs",
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.drop_table("sync_runs")
    op.drop_index("ix_segment_refreshes_due_at", table_name="segment_refreshes")
    op.drop_table("segment_refreshes")
    op.drop_index("ix_segment_overrides_customer_id", table_name="segment_overrides")
    op.drop_table("segment_overrides")
    op.drop_index("ix_segment_members_customer_id", table_name="segment_members")
    op.drop_table("segment_members")
    op.drop_table("segment_kpis")
    op.drop_index("ix_segment_history_segment_id_id", table_name="segment_history")
    op.drop_table("segment_history")
    op.drop_index(
        "ix_orders_customer_id_placed_at",
        table_name="orders",
        postgresql_include=["status", "total"],
    )
    op.drop_table("orders")
    op.drop_index("ix_metrics_dirty_segments_marked_at", table_name="metrics_dirty_segments")
    op.drop_table("metrics_dirty_segments")
    op.drop_table("destination_segments")
    op.drop_index(
        "ix_destination_members_destination_id_segment_id_customer_id",
        table_name="destination_members",
        postgresql_include=["member_key"],
    )
    op.drop_table("destination_members")
    op.drop_table("customer_rfm")
    op.drop_table("vendor_rate_windows")
    op.drop_index("uq_segments_lower_name", table_name="segments")
    op.drop_index("ix_segments_created_at_id", table_name="segments")
    op.drop_table("segments")
    op.drop_table("scheduled_jobs")
    op.drop_index(
        "ix_outbox_unpublished",
        table_name="outbox",
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.drop_index("ix_outbox_published_at", table_name="outbox")
    op.drop_table("outbox")
    op.drop_index(op.f("ix_inbox_processed_at"), table_name="inbox")
    op.drop_table("inbox")
    op.drop_index(op.f("ix_idempotency_keys_created_at"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_destinations_created_at_id", table_name="destinations")
    op.drop_table("destinations")
    op.drop_index(op.f("ix_customers_email"), table_name="customers")
    op.drop_table("customers")
    op.drop_table("api_keys")
    # ### end Alembic commands ###

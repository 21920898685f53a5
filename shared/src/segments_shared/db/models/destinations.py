import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from segments_shared.db.base import Base
from segments_shared.db.models.columns import DefaultNow


class Destination(Base):
    __tablename__ = "destinations"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(Text)
    # Non-secret configuration; secrets live encrypted in `secrets`.
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    secrets: Mapped[bytes] = mapped_column(LargeBinary)
    # Identifies the vendor account, so limits hold across destinations sharing one.
    account_key: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    created_at: Mapped[DefaultNow]
    updated_at: Mapped[DefaultNow]

    __table_args__ = (
        CheckConstraint(
            "type IN ('mailchimp', 'sendgrid', 'klaviyo', 'webhook', 'commerce')", name="type"
        ),
        Index("ix_destinations_created_at_id", "created_at", "id"),
    )


class SyncRun(Base):
    __tablename__ = "sync_runs"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=uuid.uuid4)
    # Orders runs of one segment and destination, which never overlap.
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)
    kind: Mapped[str] = mapped_column(Text, server_default="sync")
    segment_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("segments.id", ondelete="CASCADE")
    )
    destination_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("destinations.id", ondelete="CASCADE")
    )
    source_destination_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID, ForeignKey("destinations.id", ondelete="CASCADE")
    )
    status: Mapped[str] = mapped_column(Text, server_default="queued")
    requested_at: Mapped[DefaultNow]
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stats: Mapped[dict[str, Any]] = mapped_column(
        JSONB,
        server_default=text(
            """'{"planned_add": 0, "planned_remove": 0, "added": 0, "removed": 0,"""
            """ "skipped_unreachable": 0, "failed_records": 0}'::jsonb"""
        ),
    )
    error: Mapped[str | None] = mapped_column(Text)
    # The run's working state (remote id, phase), checkpointed after every batch.
    checkpoint: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    correlation_id: Mapped[str | None] = mapped_column(Text)
    # Carried out as a job of the job engine (`jobs`, queue `sync_run`), which holds its
    # lease and counts its attempts; this is the count as of its latest claim.
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    # What asked for it; the subscription whose run it is (no foreign key: a deleted
    # subscription's runs keep saying whose they were, and deleting one touches no run).
    trigger: Mapped[str] = mapped_column(Text, server_default="manual")
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(UUID)

    __table_args__ = (
        CheckConstraint("kind IN ('sync', 'promotion')", name="kind"),
        CheckConstraint("trigger IN ('manual', 'change', 'schedule', 'promotion')", name="trigger"),
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'partial', 'failed')", name="status"
        ),
        # One run at a time per segment and destination.
        Index(
            "uq_sync_runs_active",
            "segment_id",
            "destination_id",
            unique=True,
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
        Index("ix_sync_runs_segment_id_requested_at", "segment_id", "requested_at"),
        Index(
            "ix_sync_runs_subscription_id_seq",
            "subscription_id",
            "seq",
            postgresql_where=text("subscription_id IS NOT NULL"),
        ),
    )


class SyncRunFailure(Base):
    """Records a destination rejected, with the vendor's reason."""

    __tablename__ = "sync_run_failures"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    sync_run_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("sync_runs.id", ondelete="CASCADE"), index=True
    )
    record: Mapped[str] = mapped_column(Text)
    operation: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[DefaultNow]


class DestinationSegment(Base):
    """The remote segment a segment maps to at one destination, and its delivery state."""

    __tablename__ = "destination_segments"

    segment_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True
    )
    destination_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("destinations.id", ondelete="CASCADE"), primary_key=True
    )
    remote_id: Mapped[str | None] = mapped_column(Text)
    remote_name: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text, server_default="queued")
    last_run_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    last_success_run_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    last_synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[DefaultNow]

    __table_args__ = (
        CheckConstraint("state IN ('queued', 'syncing', 'synced', 'failed')", name="state"),
    )


class DestinationMember(Base):
    """What a destination holds for a segment, by the worker's record. Keyed by lower-cased
    email for ESPs and by external id for commerce and webhooks.

    No foreign keys: a sync writes this table a million rows at a time and the checks cost
    as much as the rows. Deleting a destination deletes its rows in the same transaction;
    the sync-worker deletes a deleted segment's rows when `segment.deleted` reaches it."""

    __tablename__ = "destination_members"

    destination_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    segment_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    member_key: Mapped[str] = mapped_column(Text, primary_key=True)
    # No foreign key: an erased customer stays recorded until a sync removes them remotely.
    customer_id: Mapped[int | None] = mapped_column(BigInteger)
    external_id: Mapped[str | None] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    remote_member_id: Mapped[str | None] = mapped_column(Text)
    synced_at: Mapped[DefaultNow]

    # The planner joins the record to the segment by customer, in order (a merge join),
    # reading the keys from the index alone.
    __table_args__ = (
        Index(
            "ix_destination_members_destination_id_segment_id_customer_id",
            "destination_id",
            "segment_id",
            "customer_id",
            postgresql_include=["member_key"],
        ),
    )


class VendorRateWindow(Base):
    """The latest requests sent per vendor account and rate window (a sliding log of at most
    `limit` send times), shared by every worker replica; `blocked_until` holds every replica
    back when the vendor asked to wait."""

    __tablename__ = "vendor_rate_windows"

    account_key: Mapped[str] = mapped_column(Text, primary_key=True)
    window: Mapped[str] = mapped_column(Text, primary_key=True)
    sent_at: Mapped[list[datetime]] = mapped_column(
        ARRAY(DateTime(timezone=True)), server_default="{}"
    )
    blocked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SyncRunPlan(Base):
    """What one run must send, computed once in SQL when the run starts: the run works
    through it in `position` order and checkpoints the position after every round."""

    __tablename__ = "sync_run_plan"

    sync_run_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("sync_runs.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    operation: Mapped[str] = mapped_column(Text)
    member_key: Mapped[str] = mapped_column(Text)
    # The customer who supplies an addition (names, email); none for removals.
    customer_id: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (CheckConstraint("operation IN ('add', 'remove')", name="operation"),)

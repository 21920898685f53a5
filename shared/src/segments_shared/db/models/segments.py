import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from segments_shared.db.base import Base
from segments_shared.db.ids import uuid7


class Segment(Base):
    __tablename__ = "segments"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=uuid7)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text, server_default="user")
    definition: Mapped[dict[str, Any]] = mapped_column(
        JSONB, server_default=text("""'{"type": "manual"}'::jsonb""")
    )
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    # ready | building; `inactive` is derived from `active` when the segment is read.
    status: Mapped[str] = mapped_column(Text, server_default="ready")
    # Kept exact in the same transaction as every membership change.
    member_count: Mapped[int] = mapped_column(BigInteger, server_default="0")
    membership_version: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # Changes only on user edits (docs/contract.md#http-conventions), sent as the ETag.
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    refreshed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("kind IN ('default', 'user', 'custom')", name="kind"),
        CheckConstraint("status IN ('ready', 'building')", name="status"),
        Index("uq_segments_lower_name", func.lower(text("name")), unique=True),
        Index("ix_segments_created_at_id", "created_at", "id"),
    )


class SegmentMember(Base):
    """Membership. No foreign keys: their per-row checks made set-based inserts of 500,000
    members four times slower (combine, split, refreshes). Triggers from the initial
    migration keep the cascades instead: deleting a customer or a segment deletes its
    memberships, and a customer's deletion waits for set-based inserts in flight (they hold
    `pg_advisory_xact_lock_shared(hashtext('segment_members.insert'))`) before sweeping, so
    none can leave a membership of an erased customer behind."""

    __tablename__ = "segment_members"

    segment_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    customer_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    # An order or customer change finds the segments holding that customer.
    __table_args__ = (Index("ix_segment_members_customer_id", "customer_id"),)


class SegmentOverride(Base):
    """Explicit includes and excludes of a rule segment; they win over the rule."""

    __tablename__ = "segment_overrides"

    segment_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True
    )
    customer_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True
    )
    mode: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("mode IN ('include', 'exclude')", name="mode"),
        Index("ix_segment_overrides_customer_id", "customer_id"),
    )


class SegmentHistory(Base):
    """One row per membership change: how many entered and exited, when and why."""

    __tablename__ = "segment_history"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    segment_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("segments.id", ondelete="CASCADE")
    )
    membership_version: Mapped[int] = mapped_column(BigInteger)
    entered: Mapped[int] = mapped_column(BigInteger)
    exited: Mapped[int] = mapped_column(BigInteger)
    member_count: Mapped[int] = mapped_column(BigInteger)
    cause: Mapped[str] = mapped_column(Text)
    correlation_id: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    __table_args__ = (Index("ix_segment_history_segment_id_id", "segment_id", "id"),)


class SegmentRefreshSignal(Base):
    """Changes not yet folded into rule-segment refreshes: customers changed (`customers`,
    `orders`, `rfm`: their scores moved), or the membership of `segment_id` (which rules may
    refer to) did; `customer_ids` names them, NULL meaning too many to name (or everyone).
    Insert-only, so writers never wait for each other; segment-api's refresher takes them
    (`segment_api/rules/signals.py`)."""

    __tablename__ = "segment_refresh_signals"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(Text)
    segment_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    customer_ids: Mapped[list[int] | None] = mapped_column(ARRAY(BigInteger))

    __table_args__ = (
        CheckConstraint("kind IN ('customers', 'orders', 'segment', 'rfm')", name="kind"),
    )


class RuleRefreshPending(Base):
    """Customers a rule segment's next refresh re-evaluates (when its rule allows a refresh
    of some customers only). Insert-only, a row per fold of signals: the refresh takes every
    row of its segment, and a fold never waits for a refresh that took the same customers."""

    __tablename__ = "rule_refresh_pending"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    segment_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("segments.id", ondelete="CASCADE"), index=True
    )
    customer_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Numeric, Text, func
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from segments_shared.db.base import Base


class SegmentKpis(Base):
    """Lifetime KPIs of a segment (SPEC section 7), as last computed by the metrics-worker."""

    __tablename__ = "segment_kpis"

    segment_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True
    )
    customers: Mapped[int] = mapped_column(BigInteger)
    reachable_customers: Mapped[int] = mapped_column(BigInteger)
    total_revenue: Mapped[Decimal] = mapped_column(Numeric(20, 2))
    total_orders: Mapped[int] = mapped_column(BigInteger)
    average_order_value: Mapped[Decimal | None] = mapped_column(Numeric(20, 2))
    customer_lifetime_value: Mapped[Decimal | None] = mapped_column(Numeric(20, 2))
    order_latency_days: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MetricsDirtySegment(Base):
    """Segments whose KPIs miss a change. Written in the same transaction as the change, so
    `stale` is exact; claimed by metrics-worker replicas with a short lease."""

    __tablename__ = "metrics_dirty_segments"

    segment_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True
    )
    # Bumped by every change; a recomputation clears the row only if no change came after it.
    generation: Mapped[int] = mapped_column(BigInteger, server_default="1")
    marked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The latest change, set by a trigger on insert and on every generation bump: a segment is
    # recomputed once its changes pause (or once its first unfolded change is old enough).
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(Text)
    # The request behind the latest marked change (when a change came with one):
    # `metrics.updated` carries it.
    correlation_id: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_metrics_dirty_segments_marked_at", "marked_at"),)

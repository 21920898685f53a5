import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Numeric,
    SmallInteger,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Mapped, mapped_column

from segments_shared.db.base import Base
from segments_shared.db.models.columns import DefaultNow


class SegmentKpis(Base):
    """Lifetime KPIs of a segment (docs/contract.md#kpis), kept by the metrics-worker as sums
    of its members' figures (`customer_kpi_parts`), moved by deltas."""

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
    # Sums behind order latency: gaps between consecutive placed orders, and their seconds.
    order_gaps: Mapped[int] = mapped_column(BigInteger, server_default="0")
    gap_seconds: Mapped[Decimal] = mapped_column(Numeric(), server_default="0")


class MetricsChange(Base):
    """What changed since the metrics-worker's last fold: customers whose reachability or
    orders changed, who entered and left a segment, or a segment to compute whole. Written
    insert-only by every writer (`segments_shared.changes`), deleted by the fold that takes
    it; a segment's KPIs are `stale` while a row concerns it."""

    __tablename__ = "metrics_changes"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    segment_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    customer_ids: Mapped[list[int] | None] = mapped_column(ARRAY(BigInteger))
    entered: Mapped[list[int] | None] = mapped_column(ARRAY(BigInteger))
    exited: Mapped[list[int] | None] = mapped_column(ARRAY(BigInteger))
    whole: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    correlation_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[DefaultNow]

    __table_args__ = (
        Index(
            "ix_metrics_changes_segment_id",
            "segment_id",
            postgresql_where=text("segment_id IS NOT NULL"),
        ),
    )


class CustomerKpiParts(Base):
    """Each customer's share of the KPIs of every segment they are in, as of the last fold
    that concerned them: reachable or not, and their placed orders' count, revenue, first
    and last time. No foreign key: the fold deletes an erased customer's row itself."""

    __tablename__ = "customer_kpi_parts"

    customer_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    reachable: Mapped[bool] = mapped_column(Boolean)
    orders: Mapped[int] = mapped_column(BigInteger)
    revenue: Mapped[Decimal] = mapped_column(Numeric(20, 2))
    first_order_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_order_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RfmBoundaries(Base):
    """The quintile boundaries of the last full RFM computation: a changed customer is
    scored against them at once (`metrics_worker/rfm`). Index k holds the least value
    scoring k + 2 or more (recency: the last order must be after it)."""

    __tablename__ = "rfm_boundaries"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    buyers: Mapped[int] = mapped_column(BigInteger)
    recency_after: Mapped[list[datetime]] = mapped_column(ARRAY(DateTime(timezone=True)))
    frequency_min: Mapped[list[Decimal]] = mapped_column(ARRAY(Numeric()))
    monetary_min: Mapped[list[Decimal]] = mapped_column(ARRAY(Numeric()))

    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from segments_shared.db.base import Base

EMAIL_STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending")
ORDER_STATUSES = ("placed", "cancelled", "refunded")


class Customer(Base):
    __tablename__ = "customers"

    # A compact internal key keeps membership and order tables small; the API speaks external_id.
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    external_id: Mapped[str] = mapped_column(String(128), unique=True)
    email: Mapped[str | None] = mapped_column(Text, index=True)
    first_name: Mapped[str | None] = mapped_column(Text)
    last_name: Mapped[str | None] = mapped_column(Text)
    email_status: Mapped[str] = mapped_column(Text, server_default="pending")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    shipping_address: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    billing_address: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint(
            "email_status IN ('subscribed', 'unsubscribed', 'cleaned', 'pending')",
            name="email_status",
        ),
        CheckConstraint("email = lower(email)", name="email_lower"),
    )


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    external_id: Mapped[str] = mapped_column(String(128), unique=True)
    customer_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("customers.id", ondelete="CASCADE")
    )
    total: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    currency: Mapped[str] = mapped_column(String(3))
    placed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("status IN ('placed', 'cancelled', 'refunded')", name="status"),
        CheckConstraint("total >= 0", name="total_not_negative"),
        # KPIs, RFM and rule aggregates read orders per customer in date order; the included
        # columns let them run as index-only scans.
        Index(
            "ix_orders_customer_id_placed_at",
            "customer_id",
            "placed_at",
            postgresql_include=["status", "total"],
        ),
    )


class CustomerRfm(Base):
    """RFM scores (1 to 5 by quintile, 5 best) of each customer with a placed order, kept by
    the metrics-worker (`metrics_worker/rfm.py` defines them).

    No foreign key: every computation rewrites the table set-wise, and a per-row key check
    made the first one half again as long. An erased customer's row leaves with the next
    computation, which their `customer.erased` event schedules.
    """

    __tablename__ = "customer_rfm"

    customer_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    # Recency is measured from here, so a row changes only when its figures or scores do.
    last_order_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    frequency: Mapped[int] = mapped_column(Integer)
    monetary: Mapped[Decimal] = mapped_column(Numeric(20, 2))
    recency_score: Mapped[int] = mapped_column(SmallInteger)
    frequency_score: Mapped[int] = mapped_column(SmallInteger)
    monetary_score: Mapped[int] = mapped_column(SmallInteger)
    # The computation that last changed this row.
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

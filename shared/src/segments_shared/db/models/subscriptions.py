import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from segments_shared.db.base import Base
from segments_shared.db.models.columns import DefaultNow


class Subscription(Base):
    """A destination kept in step with a segment without anyone calling the API (SPEC §6.1).
    Its runs are requested by the job of queue `subscription` keyed by its id
    (sync_worker/subscriptions.py)."""

    __tablename__ = "subscriptions"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=uuid.uuid4)
    segment_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("segments.id", ondelete="CASCADE")
    )
    destination_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("destinations.id", ondelete="CASCADE"), index=True
    )
    # {"mode": "on_change", "debounce_seconds": n} | {"mode": "interval", "every_minutes": n}
    # | {"mode": "cron", "cron": "..."}
    schedule: Mapped[dict[str, Any]] = mapped_column(JSONB)
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    # Set by the worker: `auth_failed` (three runs in a row failed on authentication) until a
    # PATCH activates it again. `segment_inactive` is derived from the segment when read.
    paused_reason: Mapped[str | None] = mapped_column(Text)
    # Runs in a row that failed on authentication (401/403).
    auth_failures: Mapped[int] = mapped_column(Integer, server_default="0")
    # An `on_change` subscription's changes that came while it was paused: one run on resume.
    change_pending: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # `interval` and `cron`: the next slot (the job is due then).
    next_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    created_at: Mapped[DefaultNow]
    updated_at: Mapped[DefaultNow]

    __table_args__ = (
        UniqueConstraint("segment_id", "destination_id"),
        CheckConstraint("paused_reason IN ('auth_failed')", name="paused_reason"),
    )


class SubscriptionSignal(Base):
    """Changes not yet folded into `on_change` subscriptions' jobs: the membership of
    `segment_id` changed (`segment`), or customers' profile or reach did (`customers`,
    `customer_ids` NULL: too many to name). Insert-only: copied by a statement trigger from
    every insert into `segment_refresh_signals` (which every writer of memberships and
    customers already makes, in its transaction) while some `on_change` subscription exists;
    the sync-worker deletes what it folds."""

    __tablename__ = "subscription_signals"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(Text)
    segment_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    customer_ids: Mapped[list[int] | None] = mapped_column(ARRAY(BigInteger))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (CheckConstraint("kind IN ('customers', 'segment')", name="kind"),)

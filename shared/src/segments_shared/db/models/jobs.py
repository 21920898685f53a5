import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, Text, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from segments_shared.db.base import Base
from segments_shared.db.models.columns import DefaultNow


class Job(Base):
    """One piece of leased work of the job engine (`segments_shared.jobs`): a sync run, a rule
    segment's refresh, the KPI fold, the RFM scores, a periodic purge.

    A job is due when `due_at` has passed and nobody holds it, or when its holder's lease
    expired. Claiming it bumps `generation`, which every later write of the holder must
    match, so a holder that lost its lease can no longer finish, retry or renew it.
    """

    __tablename__ = "jobs"

    queue: Mapped[str] = mapped_column(Text, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    # Requested and not yet claimed: due then. NULL: nothing asked for.
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The first request not yet served: a debounce's ceiling counts from it.
    requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # What the requests since the last claim asked for (merged); the claim takes it.
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # What the current claim took: a holder's successor (its lease expired) takes it again;
    # a retry or a release puts it back.
    claimed_payload: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    generation: Mapped[int] = mapped_column(BigInteger, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Claims since the last success: a crash counts as an attempt; a graceful stop does not.
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    # After a failure, not claimed again before this (the back-off), whatever is requested.
    retry_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    last_failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # What the job belongs to, when that can be deleted: the job goes with it.
    segment_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID, ForeignKey("segments.id", ondelete="CASCADE")
    )
    sync_run_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID, ForeignKey("sync_runs.id", ondelete="CASCADE")
    )
    created_at: Mapped[DefaultNow]

    __table_args__ = (
        Index(
            "ix_jobs_due",
            "queue",
            "due_at",
            postgresql_where=text("lease_owner IS NULL AND due_at IS NOT NULL"),
        ),
        Index(
            "ix_jobs_leased",
            "queue",
            "lease_expires_at",
            postgresql_where=text("lease_owner IS NOT NULL"),
        ),
        Index("ix_jobs_segment_id", "segment_id", postgresql_where=text("segment_id IS NOT NULL")),
        Index(
            "ix_jobs_sync_run_id", "sync_run_id", postgresql_where=text("sync_run_id IS NOT NULL")
        ),
    )

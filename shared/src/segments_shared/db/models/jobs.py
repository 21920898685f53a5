from datetime import datetime

from sqlalchemy import DateTime, Text
from sqlalchemy.orm import Mapped, mapped_column

from segments_shared.db.base import Base


class ScheduledJob(Base):
    """A named piece of periodic or debounced work (RFM, outbox purge, ...), claimed by one
    replica at a time with a lease."""

    __tablename__ = "scheduled_jobs"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(Text)
    last_finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

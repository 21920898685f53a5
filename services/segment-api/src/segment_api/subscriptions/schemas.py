import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from segment_api.fields import RequestModel, with_examples
from segment_api.syncs.schemas import SyncRun
from segments_shared.schedules import cron_error


class OnChangeSchedule(RequestModel):
    """A run (trigger `change`) once the segment's membership, or a member's email, name or
    email status, changed and stayed quiet this long; at the latest 60 s after the first
    change not yet sent."""

    mode: Literal["on_change"]
    debounce_seconds: int = Field(default=5, ge=1, le=3600)


class IntervalSchedule(RequestModel):
    """A run (trigger `schedule`) every `every_minutes`, slots counted from the previous
    slot."""

    mode: Literal["interval"]
    every_minutes: int = Field(ge=1, le=10080)


class CronSchedule(RequestModel):
    """A run (trigger `schedule`) at each time of a five-field cron expression, in UTC."""

    mode: Literal["cron"]
    cron: str = Field(min_length=1, max_length=200, examples=["0 6 * * 1-5"])

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        error = cron_error(value)
        if error is not None:
            raise ValueError(error)
        return value


Schedule = Annotated[
    OnChangeSchedule | IntervalSchedule | CronSchedule, Field(discriminator="mode")
]


class SubscriptionCreate(RequestModel):
    destination_id: uuid.UUID
    schedule: Schedule

    model_config = with_examples(
        {
            "destination_id": "6f1c2a1e-0d7b-4a43-9a57-2b8f2c1d0e11",
            "schedule": {"mode": "on_change", "debounce_seconds": 5},
        }
    )


class SubscriptionUpdate(RequestModel):
    schedule: Schedule | None = None
    active: bool | None = Field(
        default=None, description="True resumes a subscription paused after auth failures"
    )


class Subscription(BaseModel):
    id: uuid.UUID
    segment_id: uuid.UUID
    destination_id: uuid.UUID
    schedule: Schedule
    active: bool
    paused_reason: Literal["segment_inactive", "auth_failed"] | None = Field(
        description="Why nothing runs although `active`: the segment is inactive, or three "
        "runs in a row failed on authentication (until a PATCH sets `active` true)"
    )
    next_run_at: datetime | None = Field(description="The next slot (interval and cron)")
    last_run: SyncRun | None = Field(description="The subscription's latest run")
    version: int
    created_at: datetime
    updated_at: datetime

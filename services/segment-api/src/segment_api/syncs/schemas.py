import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from segment_api.fields import RequestModel

SyncStatus = Literal["queued", "running", "succeeded", "partial", "failed"]


class SyncCreate(RequestModel):
    destination_id: uuid.UUID


class SyncStats(BaseModel):
    planned_add: int = 0
    planned_remove: int = 0
    added: int = 0
    removed: int = 0
    skipped_unreachable: int = 0
    failed_records: int = 0


class FailedRecord(BaseModel):
    record: str = Field(description="Email (ESPs) or external id (commerce, webhook)")
    operation: str
    reason: str


class SyncRun(BaseModel):
    id: uuid.UUID
    kind: Literal["sync", "promotion"]
    segment_id: uuid.UUID
    destination_id: uuid.UUID
    from_destination_id: uuid.UUID | None
    status: SyncStatus
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    stats: SyncStats
    error: str | None
    failed_records: list[FailedRecord] = Field(
        description="The first records the destination rejected, with its reasons"
    )

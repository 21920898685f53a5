import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from segment_api.fields import RequestModel, with_examples

SyncStatus = Literal["queued", "running", "succeeded", "partial", "failed"]
SyncTrigger = Literal["manual", "change", "schedule", "promotion"]


class SyncCreate(RequestModel):
    destination_id: uuid.UUID


class PromotionCreate(RequestModel):
    from_destination_id: uuid.UUID = Field(description="A commerce destination in `production`")
    to_destination_id: uuid.UUID = Field(description="A commerce destination in `staging`")

    model_config = with_examples(
        {
            "from_destination_id": "6f1c2a1e-0d7b-4a43-9a57-2b8f2c1d0e11",
            "to_destination_id": "0b9d6c55-51c3-4a8e-8f0a-7e2d4c3b2a19",
        }
    )


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
    from_destination_id: uuid.UUID | None = Field(
        description="A promotion's source (the production destination)"
    )
    status: SyncStatus
    trigger: SyncTrigger = Field(
        description="What asked for the run: a request (`manual`), a subscription (`change`, "
        "`schedule`) or a promotion"
    )
    subscription_id: uuid.UUID | None = Field(
        description="The subscription whose run it is; null for manual runs and promotions"
    )
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    stats: SyncStats
    error: str | None
    failed_records: list[FailedRecord] = Field(
        description="The first records the destination rejected, with its reasons"
    )


class DestinationState(BaseModel):
    """What a destination holds of a segment by the worker's record."""

    remote_id: str | None = Field(description="The remote segment's id at the vendor")
    remote_name: str | None
    member_count: int = Field(description="Members the destination holds, by the record")
    last_run: SyncRun | None = Field(description="The latest run for this destination")

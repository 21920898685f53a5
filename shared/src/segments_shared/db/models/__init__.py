"""Every table of the product. Alembic migrations under `db/migrations` create them."""

from segments_shared.db.models.auth import ApiKey, IdempotencyKey
from segments_shared.db.models.bus import Inbox, Outbox
from segments_shared.db.models.customers import Customer, CustomerRfm, Order
from segments_shared.db.models.destinations import (
    Destination,
    DestinationMember,
    DestinationSegment,
    SyncRun,
    SyncRunFailure,
    VendorRateWindow,
)
from segments_shared.db.models.jobs import ScheduledJob
from segments_shared.db.models.metrics import MetricsDirtySegment, SegmentKpis
from segments_shared.db.models.segments import (
    Segment,
    SegmentHistory,
    SegmentMember,
    SegmentOverride,
    SegmentRefresh,
    SegmentRefreshSignal,
)

__all__ = [
    "ApiKey",
    "Customer",
    "CustomerRfm",
    "Destination",
    "DestinationMember",
    "DestinationSegment",
    "IdempotencyKey",
    "Inbox",
    "MetricsDirtySegment",
    "Order",
    "Outbox",
    "ScheduledJob",
    "Segment",
    "SegmentHistory",
    "SegmentKpis",
    "SegmentMember",
    "SegmentOverride",
    "SegmentRefresh",
    "SegmentRefreshSignal",
    "SyncRun",
    "SyncRunFailure",
    "VendorRateWindow",
]

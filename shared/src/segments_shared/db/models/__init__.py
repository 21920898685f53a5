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
from segments_shared.db.models.jobs import Job
from segments_shared.db.models.metrics import (
    CustomerKpiParts,
    MetricsChange,
    RfmBoundaries,
    SegmentKpis,
)
from segments_shared.db.models.segments import (
    RuleRefreshPending,
    Segment,
    SegmentHistory,
    SegmentMember,
    SegmentOverride,
    SegmentRefreshSignal,
)
from segments_shared.db.models.subscriptions import Subscription, SubscriptionSignal

__all__ = [
    "ApiKey",
    "Customer",
    "CustomerKpiParts",
    "CustomerRfm",
    "Destination",
    "DestinationMember",
    "DestinationSegment",
    "IdempotencyKey",
    "Inbox",
    "Job",
    "MetricsChange",
    "Order",
    "Outbox",
    "RfmBoundaries",
    "RuleRefreshPending",
    "Segment",
    "SegmentHistory",
    "SegmentKpis",
    "SegmentMember",
    "SegmentOverride",
    "SegmentRefreshSignal",
    "Subscription",
    "SubscriptionSignal",
    "SyncRun",
    "SyncRunFailure",
    "VendorRateWindow",
]

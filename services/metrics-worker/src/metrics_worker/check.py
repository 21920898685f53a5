"""The full check: every segment's KPIs recomputed from the orders themselves, on a schedule
and on demand, and compared with the figures the fold keeps by deltas.

Each segment is checked in its own REPEATABLE READ transaction that first folds what is
pending, so the kept figures and the recomputation describe one snapshot; between segments
the fold runs as usual. A difference (there should be none) is logged, counted
(`segments_kpi_drift`) and repaired: the segment takes the recomputed figures, and its
members' stored figures are rebuilt from the orders, so that the next folds build on exact
ones.
"""

import logging
import uuid
from collections.abc import Awaitable, Callable

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from metrics_worker.fold import MEMBER_FIGURES, Folded, kpi_transaction
from metrics_worker.kpis import compute_segment_kpis
from segments_shared.changes import Changes, recording
from segments_shared.jobs.runner import Lease
from segments_shared.kpis import SUMS

log = logging.getLogger(__name__)

DRIFT = Counter("segments_kpi_drift", "Segments whose kept KPIs differed from a full check")

Fold = Callable[[AsyncConnection, Changes], Awaitable[Folded]]

_SEGMENTS = text("SELECT id FROM segments ORDER BY id")
_KEPT = text("SELECT * FROM segment_kpis WHERE segment_id = :segment_id")
_REBUILD_PARTS = text(
    MEMBER_FIGURES.format(
        only="",
        then="""DO UPDATE SET
        reachable = excluded.reachable, orders = excluded.orders, revenue = excluded.revenue,
        first_order_at = excluded.first_order_at, last_order_at = excluded.last_order_at
    WHERE (p.reachable, p.orders, p.revenue, p.first_order_at, p.last_order_at)
          IS DISTINCT FROM (excluded.reachable, excluded.orders, excluded.revenue,
                            excluded.first_order_at, excluded.last_order_at)""",
    )
)
_STORE = text(
    f"""
    INSERT INTO segment_kpis AS k (segment_id, {", ".join(SUMS)}, average_order_value,
                                   customer_lifetime_value, order_latency_days, computed_at)
    VALUES (:segment_id, {", ".join(f":{name}" for name in SUMS)}, :average_order_value,
            :customer_lifetime_value, :order_latency_days, :computed_at)
    ON CONFLICT (segment_id) DO UPDATE SET
        {", ".join(f"{name} = excluded.{name}" for name in SUMS)},
        average_order_value = excluded.average_order_value,
        customer_lifetime_value = excluded.customer_lifetime_value,
        order_latency_days = excluded.order_latency_days, computed_at = excluded.computed_at
    """
)


async def check_segment(conn: AsyncConnection, segment_id: uuid.UUID) -> bool:
    """Compare and repair one segment in the caller's transaction; True when it drifted."""
    kept = (await conn.execute(_KEPT, {"segment_id": segment_id})).mappings().first()
    exact = await compute_segment_kpis(conn, segment_id)
    if kept is None:
        # Never computed (figures lost with a restore, say): computed now, not a drift.
        await conn.execute(_REBUILD_PARTS, {"segment_id": segment_id})
        await conn.execute(_STORE, {"segment_id": segment_id, **exact})
        return False
    if all(kept[name] == exact[name] for name in SUMS):
        return False
    DRIFT.inc()
    log.warning(
        "KPIs drifted from a full check; repaired",
        extra={
            "segment_id": str(segment_id),
            "kept": {name: str(kept[name]) for name in SUMS},
            "exact": {name: str(exact[name]) for name in SUMS},
        },
    )
    await conn.execute(_REBUILD_PARTS, {"segment_id": segment_id})
    await conn.execute(_STORE, {"segment_id": segment_id, **exact})
    return True


async def check_every_segment(engine: AsyncEngine, lease: Lease, fold: Fold, source: str) -> int:
    """Check each segment, folding first; returns how many drifted."""
    async with engine.connect() as conn:
        segment_ids = list((await conn.execute(_SEGMENTS)).scalars())
    drifted = 0
    for segment_id in segment_ids:
        lease.check()
        async with kpi_transaction(engine) as conn, recording(conn, source) as changes:
            await fold(conn, changes)
            drifted += await check_segment(conn, segment_id)
    log.info("KPIs checked", extra={"segments": len(segment_ids), "drifted": drifted})
    return drifted

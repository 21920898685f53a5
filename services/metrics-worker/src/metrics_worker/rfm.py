"""RFM scores of every customer with a placed order (SPEC section 7), in one SQL statement.

Measures, over `placed` orders only:

- recency: whole days from the customer's last placed order to the computation
  (`floor((now - last_order_at) / 1 day)`); fewer is better;
- frequency: the number of placed orders; more is better;
- monetary: the sum of their totals; more is better.

Scores, 1 to 5 for each measure, over the N customers with at least one placed order:

    score = 1 + floor(5 * W / N)

where W is the number of those customers with a strictly worse value (more recency days; fewer
orders; less revenue). So the worst value scores 1, customers with equal values always score
the same (unlike `ntile()`, which splits ties arbitrarily), and without ties this is the
quintile of the customer's position: with N = 10, positions 1-2 from the bottom score 1, 3-4
score 2, and so on. A tie spanning a boundary takes the score of its lowest position, so a
score can be empty (if 60% of buyers have one order, they all score 1 and two orders score 4).
In SQL, W = rank() - 1 ordered from worst to best, in integer arithmetic.

The statement computes every score and then writes only the difference to `customer_rfm`:
rows for new buyers, rows whose values or scores changed, and deletions for customers without
a placed order any more (cancelled, refunded or erased). It stores `last_order_at` rather than
the day count, which changes for everyone every day, so a run rewrites few rows. The last
run's time is `scheduled_jobs.last_finished_at` of job 'rfm'; `changed_at` is the run that
last changed a row.
"""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from metrics_worker.jobs import claim_job, ensure_job, fail_job, finish_job, seconds_until_due

log = logging.getLogger(__name__)

JOB = "rfm"
LEASE_SECONDS = 600.0
RETRY_SECONDS = 30.0
IDLE_POLL_SECONDS = 5.0

RECOMPUTED = Counter("segments_rfm_recomputations", "RFM recomputations of every customer")
RECOMPUTE_SECONDS = Histogram(
    "segments_rfm_recompute_seconds",
    "Time to recompute every customer's RFM scores",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 60, 120, 300),
)

# Per statement: the per-customer aggregate streams from the orders index in customer order
# (the planner underestimates the number of buyers and picks a hash aggregate that spills,
# three times slower here); the window sorts fit in memory; compiling is slower than running.
_SETTINGS = (
    "SET LOCAL enable_hashagg = off",
    "SET LOCAL work_mem = '64MB'",
    "SET LOCAL jit = off",
)

_RECOMPUTE = text(
    """
    WITH placed AS (
        SELECT customer_id,
               count(*) AS frequency,
               sum(total) AS monetary,
               max(placed_at) AS last_order_at
        FROM orders
        WHERE status = 'placed'
        GROUP BY customer_id
    ),
    measured AS (
        SELECT customer_id, last_order_at, frequency, monetary,
               floor(extract(epoch FROM now() - last_order_at) / 86400) AS recency_days
        FROM placed
    ),
    scored AS (
        SELECT customer_id, last_order_at, frequency, monetary,
               (1 + 5 * (rank() OVER (ORDER BY recency_days DESC) - 1)
                    / count(*) OVER ())::smallint AS recency_score,
               (1 + 5 * (rank() OVER (ORDER BY frequency) - 1)
                    / count(*) OVER ())::smallint AS frequency_score,
               (1 + 5 * (rank() OVER (ORDER BY monetary) - 1)
                    / count(*) OVER ())::smallint AS monetary_score
        FROM measured
    ),
    diff AS MATERIALIZED (
        SELECT s.*, r.customer_id AS stored_id
        FROM scored s FULL JOIN customer_rfm r ON r.customer_id = s.customer_id
        WHERE s.customer_id IS NULL
           OR r.customer_id IS NULL
           OR (r.last_order_at, r.frequency, r.monetary,
               r.recency_score, r.frequency_score, r.monetary_score)
              IS DISTINCT FROM
              (s.last_order_at, s.frequency, s.monetary,
               s.recency_score, s.frequency_score, s.monetary_score)
    ),
    updated AS (
        UPDATE customer_rfm r
        SET last_order_at = d.last_order_at, frequency = d.frequency, monetary = d.monetary,
            recency_score = d.recency_score, frequency_score = d.frequency_score,
            monetary_score = d.monetary_score, changed_at = now()
        FROM diff d
        WHERE d.customer_id IS NOT NULL AND r.customer_id = d.stored_id
        RETURNING 1
    ),
    inserted AS (
        INSERT INTO customer_rfm (customer_id, last_order_at, frequency, monetary,
                                  recency_score, frequency_score, monetary_score, changed_at)
        SELECT customer_id, last_order_at, frequency, monetary,
               recency_score, frequency_score, monetary_score, now()
        FROM diff
        WHERE stored_id IS NULL
        ORDER BY customer_id
        ON CONFLICT (customer_id) DO NOTHING
        RETURNING 1
    ),
    deleted AS (
        DELETE FROM customer_rfm r USING diff d
        WHERE d.customer_id IS NULL AND r.customer_id = d.stored_id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM inserted) AS inserted,
           (SELECT count(*) FROM updated) AS updated,
           (SELECT count(*) FROM deleted) AS deleted
    """
)


@dataclass(frozen=True)
class RfmChanges:
    inserted: int
    updated: int
    deleted: int


async def recompute_rfm(conn: AsyncConnection) -> RfmChanges:
    """Score every customer with a placed order; in the caller's transaction."""
    for setting in _SETTINGS:
        await conn.execute(text(setting))
    row = (await conn.execute(_RECOMPUTE)).one()
    return RfmChanges(int(row.inserted), int(row.updated), int(row.deleted))


class RfmRecomputer:
    """Runs until stopped: recomputes RFM when the job is due, on one replica at a time."""

    def __init__(self, engine: AsyncEngine, worker: str, *, period: float) -> None:
        self.engine = engine
        self.worker = worker
        self.period = period
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._job_exists = False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                if not self._job_exists:
                    await ensure_job(self.engine, JOB)
                    self._job_exists = True
                if await claim_job(
                    self.engine, JOB, self.worker, period=self.period, lease=LEASE_SECONDS
                ):
                    await self._recompute()
                    continue
                seconds = await seconds_until_due(self.engine, JOB, period=self.period)
                delay = IDLE_POLL_SECONDS if seconds is None else seconds
            except Exception:
                log.exception("RFM loop failed; retrying")
                delay = IDLE_POLL_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(IDLE_POLL_SECONDS, max(0.01, delay)))

    async def _recompute(self) -> None:
        started = time.perf_counter()
        try:
            async with self.engine.begin() as conn:
                changes = await recompute_rfm(conn)
                await finish_job(conn, JOB, self.worker)
        except Exception:
            log.exception("RFM recomputation failed; retrying later")
            await fail_job(self.engine, JOB, self.worker, retry=RETRY_SECONDS)
            return
        elapsed = time.perf_counter() - started
        RECOMPUTE_SECONDS.observe(elapsed)
        RECOMPUTED.inc()
        log.info(
            "RFM recomputed",
            extra={
                "seconds": round(elapsed, 3),
                "inserted": changes.inserted,
                "updated": changes.updated,
                "deleted": changes.deleted,
            },
        )

"""Subscriptions (SPEC §6.1) as jobs of the job engine: queue `subscription`, one job per
subscription keyed by its id, due at its next slot (`interval`, `cron`) or when its changes
have been quiet for its debounce (`on_change`).

- `prepare` folds change signals (`subscription_signals`, insert-only, taken with SKIP
  LOCKED so replicas take disjoint rows) into requests of the jobs of the `on_change`
  subscriptions they concern: each request moves the job `debounce_seconds` on, but never
  past the ceiling (60 s) after the first change not yet sent (`store.request`'s ceiling).
- `work` requests one sync run with its trigger (`change`, `schedule`) while the job's claim
  holds (its generation, checked in the same transaction), so each slot requests exactly one
  run across replicas. While the pair's run is queued or running the job is given back and
  tried again shortly: changes that come during a run lead to exactly one follow-up.
- A paused subscription (inactive, `auth_failed`, or its segment inactive) runs nothing; an
  `on_change` one keeps `change_pending`, which its resumption (segment-api) turns into one
  run. A schedule keeps ticking through a pause, slot by slot.
"""

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segments_shared.changes import changes_of, unit_of_work
from segments_shared.db.types import AnyRow
from segments_shared.events import SyncRequested, SyncRequestedEvent
from segments_shared.jobs import store
from segments_shared.jobs.runner import JobKind, Lease, LeaseLost, Release
from segments_shared.jobs.store import Claim
from segments_shared.schedules import next_slot
from sync_worker import runs
from sync_worker.settings import SyncWorkerSettings

log = logging.getLogger(__name__)

QUEUE = "subscription"
SOURCE = "sync-worker"
# Signals folded per pass.
FOLD_LIMIT = 5000
# Member changes count for these destinations only (their members carry email and name).
ESP_TYPES = ("mailchimp", "sendgrid", "klaviyo")

_FOLD = text(
    """
    WITH taken AS (
        DELETE FROM subscription_signals WHERE id IN (
            SELECT id FROM subscription_signals ORDER BY id LIMIT :limit
            FOR UPDATE SKIP LOCKED)
        RETURNING kind, segment_id, customer_ids
    ), touched AS (
        SELECT segment_id, false AS members_only FROM taken WHERE kind = 'segment'
        UNION
        SELECT m.segment_id, true FROM taken t
        CROSS JOIN LATERAL unnest(t.customer_ids) AS c(id)
        JOIN segment_members m ON m.customer_id = c.id
        WHERE t.kind = 'customers'
        UNION
        -- Too many customers to name: every segment may have changed for ESPs.
        SELECT s.segment_id, true FROM subscriptions s
        WHERE EXISTS (SELECT 1 FROM taken WHERE kind = 'customers' AND customer_ids IS NULL)
    )
    SELECT DISTINCT s.id, s.segment_id, (s.schedule->>'debounce_seconds')::float AS debounce
    FROM touched t
    JOIN subscriptions s ON s.segment_id = t.segment_id
    JOIN destinations d ON d.id = s.destination_id
    WHERE s.schedule->>'mode' = 'on_change'
      AND (NOT t.members_only OR d.type = ANY(:esp_types))
    """
)

# Kept from deletion while the run is requested (KEY SHARE, as the run's foreign keys take
# it), one statement per table and before the subscription's row: a deletion holds the
# segment or destination first and then cascades to the subscription, so taking them in that
# order never deadlocks with it.
_HOLD_TARGET = text(
    """
    SELECT
        EXISTS (SELECT 1 FROM segments WHERE id = (
            SELECT segment_id FROM subscriptions WHERE id = :id) FOR KEY SHARE) AS segment,
        EXISTS (SELECT 1 FROM destinations WHERE id = (
            SELECT destination_id FROM subscriptions WHERE id = :id) FOR KEY SHARE)
            AS destination
    """
)
_SUBSCRIPTION = text(
    """
    SELECT s.*, g.active AS segment_active FROM subscriptions s
    JOIN segments g ON g.id = s.segment_id
    WHERE s.id = :id FOR NO KEY UPDATE OF s
    """
)
_INSERT_RUN = text(
    """
    INSERT INTO sync_runs (id, kind, segment_id, destination_id, trigger, subscription_id)
    VALUES (:id, 'sync', :segment_id, :destination_id, :trigger, :subscription_id)
    ON CONFLICT (segment_id, destination_id) WHERE status IN ('queued', 'running')
    DO NOTHING
    RETURNING id
    """
)
_QUEUED = text(
    """
    INSERT INTO destination_segments (segment_id, destination_id, state, last_run_id)
    VALUES (:segment_id, :destination_id, 'queued', :run_id)
    ON CONFLICT (segment_id, destination_id) DO UPDATE
    SET state = 'queued', last_run_id = EXCLUDED.last_run_id
    """
)


class Subscriptions(JobKind):
    queue = QUEUE
    lease_seconds = 30.0
    concurrency = 8

    def __init__(self, engine: AsyncEngine, settings: SyncWorkerSettings, worker: str) -> None:
        self.engine = engine
        self.worker = worker
        self.ceiling = settings.subscription_change_ceiling_seconds
        self.poll = settings.subscription_poll_seconds
        self.busy_retry = settings.subscription_busy_retry_seconds

    async def prepare(self, engine: AsyncEngine) -> float | None:
        async with engine.begin() as conn:
            rows = (
                await conn.execute(_FOLD, {"limit": FOLD_LIMIT, "esp_types": list(ESP_TYPES)})
            ).all()
            for row in rows:
                await store.request(
                    conn,
                    QUEUE,
                    str(row.id),
                    delay=row.debounce,
                    ceiling=self.ceiling,
                    notify=False,
                )
        return self.poll

    async def work(self, job: Claim, lease: Lease) -> None:
        subscription_id = uuid.UUID(job.key)
        async with unit_of_work(self.engine, SOURCE) as conn:
            present = (await conn.execute(_HOLD_TARGET, {"id": subscription_id})).one()
            if not (present.segment and present.destination):
                return  # deleted (with its segment or destination): the job goes
            subscription = (await conn.execute(_SUBSCRIPTION, {"id": subscription_id})).first()
            if subscription is None:
                return
            # In this transaction, and only while our claim holds the job: one run per slot.
            # (The subscription's row first, as segment-api takes it before the job's.)
            if not await store.renew(conn, job, self.worker, lease=self.lease_seconds):
                raise LeaseLost(job.key)
            await self._due(conn, job, subscription)

    async def _due(self, conn: AsyncConnection, job: Claim, subscription: AnyRow) -> None:
        schedule: dict[str, Any] = subscription.schedule
        on_change = schedule["mode"] == "on_change"
        now = datetime.now(UTC)
        if not on_change:
            slot = subscription.next_run_at
            if slot is not None and slot > now:
                # Requested early (its schedule changed): due at its slot.
                await self._request_at(conn, job.key, slot, now)
                return
            following = next_slot(schedule, slot or now, now)
            if following is not None:
                await conn.execute(
                    text("UPDATE subscriptions SET next_run_at = :slot WHERE id = :id"),
                    {"slot": following, "id": subscription.id},
                )
                await self._request_at(conn, job.key, following, now)
        paused = (
            not subscription.active
            or subscription.paused_reason is not None
            or not subscription.segment_active
        )
        if paused:
            if on_change:
                await conn.execute(
                    text("UPDATE subscriptions SET change_pending = true WHERE id = :id"),
                    {"id": subscription.id},
                )
            return
        run_id = uuid.uuid4()
        inserted = (
            await conn.execute(
                _INSERT_RUN,
                {
                    "id": run_id,
                    "segment_id": subscription.segment_id,
                    "destination_id": subscription.destination_id,
                    "trigger": "change" if on_change else "schedule",
                    "subscription_id": subscription.id,
                },
            )
        ).scalar_one_or_none()
        if inserted is None:
            # The pair's run is queued or running: one follow-up once it ends (the
            # transaction rolls back; the schedule's next slot is kept for then).
            raise Release(
                "a run of this segment and destination is in progress", delay=self.busy_retry
            )
        params = {
            "segment_id": subscription.segment_id,
            "destination_id": subscription.destination_id,
            "run_id": run_id,
        }
        await conn.execute(_QUEUED, params)
        await conn.execute(
            text("UPDATE subscriptions SET change_pending = false WHERE id = :id"),
            {"id": subscription.id},
        )
        await store.request(conn, runs.QUEUE, str(run_id), sync_run_id=run_id)
        changes_of(conn).publish(
            SyncRequestedEvent(
                source=SOURCE,
                subject=str(subscription.segment_id),
                data=SyncRequested(
                    sync_id=run_id,
                    segment_id=subscription.segment_id,
                    destination_id=subscription.destination_id,
                ),
            )
        )
        log.info(
            "subscription requested a sync run",
            extra={"subscription_id": job.key, "sync_id": str(run_id)},
        )

    @staticmethod
    async def _request_at(conn: AsyncConnection, key: str, slot: datetime, now: datetime) -> None:
        delay = max((slot - now).total_seconds(), 0.0)
        await store.request(conn, QUEUE, key, delay=delay, notify=False)


_AUTH = text(
    """
    UPDATE subscriptions
    SET auth_failures = CASE WHEN :auth_failed THEN auth_failures + 1 ELSE 0 END,
        paused_reason = CASE WHEN :auth_failed AND auth_failures + 1 >= :limit
                             THEN 'auth_failed' ELSE paused_reason END,
        active = CASE WHEN :auth_failed AND auth_failures + 1 >= :limit
                      THEN false ELSE active END
    WHERE id = :id
    """
)
# Runs in a row failing on authentication that pause a subscription.
AUTH_FAILURES_PAUSE = 3


async def record_outcome(
    conn: AsyncConnection, subscription_id: uuid.UUID | None, *, auth_failed: bool
) -> None:
    """A subscription's run ended: count authentication failures in a row, and pause the
    subscription at the third (`auth_failed`, until a PATCH sets `active` true)."""
    if subscription_id is None:
        return
    await conn.execute(
        _AUTH, {"id": subscription_id, "auth_failed": auth_failed, "limit": AUTH_FAILURES_PAUSE}
    )

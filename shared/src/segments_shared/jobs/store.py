"""The SQL of the job engine: requesting, claiming, renewing and ending jobs (`jobs`).

- `request` makes a job due (creating it if needed): at a time, or debounced. Requests fold
  into one run; one arriving while the job runs makes exactly one more run follow.
- `claim` takes due jobs with `FOR UPDATE SKIP LOCKED` (replicas take disjoint jobs, and the
  transaction is short: the lease, not a row lock, holds the job while it runs), bumps each
  job's `generation` and counts the attempt.
- `renew`, `finish`, `retry` and `release` hold only for the claim's generation and owner: a
  worker that lost its lease (its process stalled, another took the job over) changes
  nothing.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

NOTIFY_CHANNEL = "segments_jobs"


@dataclass(frozen=True)
class Claim:
    queue: str
    key: str
    generation: int
    # Claims since the last success, this one included.
    attempts: int
    payload: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None


@dataclass(frozen=True)
class ClaimFilter:
    """Fixed SQL a queue adds to its claim (never user input): tables joined to `jobs j`, a
    condition, and locks taken with the job (`FOR KEY SHARE OF s SKIP LOCKED`)."""

    join: str = ""
    where: str = ""
    locks: str = ""


_REQUEST = """
    WITH requested AS (
        INSERT INTO jobs AS j (queue, key, due_at, requested_at, payload, segment_id, sync_run_id)
        VALUES (:queue, :key, now() + make_interval(secs => :delay), now(),
                CAST(:payload AS jsonb), :segment_id, :sync_run_id)
        ON CONFLICT (queue, key) DO UPDATE SET
            requested_at = coalesce(j.requested_at, now()),
            due_at = {due},
            -- Where two requests say different things (a cause), the one due first wins.
            payload = CASE WHEN excluded.due_at < coalesce(j.due_at, 'infinity')
                           THEN j.payload || excluded.payload
                           ELSE excluded.payload || j.payload END
        RETURNING 1
    )
    SELECT {notify} FROM requested
"""
# The first request sets the time; later ones fold in (never later than the first's).
_WINDOW = "least(coalesce(j.due_at, 'infinity'), excluded.due_at)"
# Each request moves the time on, but never past the ceiling from the first unserved one.
_TRAILING = (
    "least(excluded.due_at, coalesce(j.requested_at, now()) + make_interval(secs => :ceiling))"
)

_DUE = (
    "((j.lease_owner IS NULL AND j.due_at <= now()"
    " AND (j.retry_after IS NULL OR j.retry_after <= now()))"
    " OR (j.lease_owner IS NOT NULL AND j.lease_expires_at < now()))"
)

_CLAIM = """
    WITH picked AS (
        SELECT j.queue, j.key, j.payload, j.claimed_payload FROM jobs j {join}
        WHERE j.queue = :queue AND {due} {where} AND NOT (j.key = ANY(:running))
        ORDER BY coalesce(j.due_at, j.lease_expires_at), j.key
        LIMIT :limit
        FOR UPDATE OF j SKIP LOCKED {locks}
    )
    UPDATE jobs j
    SET generation = j.generation + 1, lease_owner = :worker,
        lease_expires_at = now() + make_interval(secs => :lease),
        attempts = j.attempts + 1, last_started_at = now(),
        due_at = NULL, requested_at = NULL, payload = '{{}}'::jsonb,
        -- A job taken over after its holder's lease expired keeps what that holder took.
        claimed_payload = coalesce(picked.claimed_payload, '{{}}'::jsonb) || picked.payload
    FROM picked
    WHERE j.queue = picked.queue AND j.key = picked.key
    RETURNING j.key, j.generation, j.attempts, j.claimed_payload, j.last_started_at
"""

_HELD = "queue = :queue AND key = :key AND generation = :generation AND lease_owner = :worker"

_RENEW = f"UPDATE jobs SET lease_expires_at = now() + make_interval(secs => :lease) WHERE {_HELD}"

# Done. A request that came during the run keeps its due time (one more run follows); a
# one-shot job with none goes, a periodic one is due again at `next_due`.
_FINISH = f"""
    WITH gone AS (
        DELETE FROM jobs WHERE {_HELD} AND :delete AND due_at IS NULL RETURNING 1
    )
    UPDATE jobs
    SET lease_owner = NULL, lease_expires_at = NULL, attempts = 0, last_error = NULL,
        last_finished_at = now(), due_at = coalesce(due_at, CAST(:next_due AS timestamptz)),
        claimed_payload = NULL, retry_after = NULL
    WHERE {_HELD} AND NOT EXISTS (SELECT 1 FROM gone)
"""

# The claim's payload goes back, under what requests added meanwhile; no request claims it
# again before the back-off (`retry_after`).
_RETRY = f"""
    UPDATE jobs
    SET lease_owner = NULL, lease_expires_at = NULL,
        last_error = :error, last_failed_at = now(),
        retry_after = now() + make_interval(secs => :delay),
        due_at = least(coalesce(due_at, 'infinity'), now() + make_interval(secs => :delay)),
        requested_at = coalesce(requested_at, now()),
        payload = coalesce(claimed_payload, '{{}}'::jsonb) || payload, claimed_payload = NULL
    WHERE {_HELD}
"""

_RELEASE = f"""
    UPDATE jobs
    SET lease_owner = NULL, lease_expires_at = NULL,
        attempts = CASE WHEN :counted THEN attempts ELSE greatest(attempts - 1, 0) END,
        retry_after = now() + make_interval(secs => :delay),
        due_at = least(coalesce(due_at, 'infinity'), now() + make_interval(secs => :delay)),
        requested_at = coalesce(requested_at, now()),
        payload = coalesce(claimed_payload, '{{}}'::jsonb) || payload, claimed_payload = NULL
    WHERE {_HELD}
"""

_NEXT_DUE = """
    SELECT extract(epoch FROM min(CASE WHEN lease_owner IS NULL
                                       THEN greatest(due_at, retry_after)
                                       ELSE lease_expires_at END) - now())
    FROM jobs WHERE queue = ANY(:queues)
"""


async def request(
    conn: AsyncConnection,
    queue: str,
    key: str,
    *,
    delay: float = 0.0,
    ceiling: float | None = None,
    payload: dict[str, Any] | None = None,
    segment_id: object = None,
    sync_run_id: object = None,
    notify: bool = True,
) -> None:
    """Make a job due in `delay` seconds, in the caller's transaction. Without `ceiling` the
    first unserved request sets the time (a debounce window); with it, each request moves
    the time to `delay` from now, but never past `ceiling` after the first unserved one (a
    quiet-period debounce that a steady stream cannot postpone forever). `notify` wakes the
    runners of the queue at commit (leave it off where the requester's own runner carries the
    job out, or requests are frequent: every NOTIFY queues its transaction's commit on one
    server-wide lock)."""
    due = _WINDOW if ceiling is None else _TRAILING
    params: dict[str, Any] = {
        "queue": queue,
        "key": key,
        "delay": delay if ceiling is None else min(delay, ceiling),
        "payload": json.dumps(payload or {}),
        "segment_id": segment_id,
        "sync_run_id": sync_run_id,
    }
    if ceiling is not None:
        params["ceiling"] = ceiling
    wake = f"pg_notify('{NOTIFY_CHANNEL}', :queue)" if notify else "1"
    await conn.execute(text(_REQUEST.format(due=due, notify=wake)), params)


_ENSURE = """
    INSERT INTO jobs (queue, key, due_at, requested_at) VALUES (:queue, :key, now(), now())
    ON CONFLICT (queue, key) DO NOTHING
"""


async def ensure(conn: AsyncConnection, queue: str, key: str) -> None:
    """The job exists: due at once if it did not (a periodic job's first run)."""
    await conn.execute(text(_ENSURE), {"queue": queue, "key": key})


async def claim(
    conn: AsyncConnection,
    queue: str,
    worker: str,
    *,
    limit: int,
    lease: float,
    claim_filter: ClaimFilter | None = None,
    running: Sequence[str] = (),
) -> list[Claim]:
    """Claim up to `limit` due jobs; never those of `running` (the caller carries them out
    already: its lease expired but its renewal, which still holds, will come)."""
    where = claim_filter or ClaimFilter()
    statement = _CLAIM.format(
        join=where.join,
        due=_DUE,
        where=f"AND ({where.where})" if where.where else "",
        locks=where.locks,
    )
    params = {
        "queue": queue,
        "worker": worker,
        "limit": limit,
        "lease": lease,
        "running": list(running),
    }
    rows = await conn.execute(text(statement), params)
    return [
        Claim(
            queue=queue,
            key=row.key,
            generation=int(row.generation),
            attempts=int(row.attempts),
            payload=dict(row.claimed_payload or {}),
            started_at=row.last_started_at,
        )
        for row in rows
    ]


def _held(job: Claim, worker: str) -> dict[str, Any]:
    return {"queue": job.queue, "key": job.key, "generation": job.generation, "worker": worker}


async def renew(conn: AsyncConnection, job: Claim, worker: str, *, lease: float) -> bool:
    result = await conn.execute(text(_RENEW), {**_held(job, worker), "lease": lease})
    return bool(result.rowcount)


async def finish(
    conn: AsyncConnection,
    job: Claim,
    worker: str,
    *,
    delete: bool = True,
    next_due: datetime | None = None,
) -> None:
    await conn.execute(
        text(_FINISH), {**_held(job, worker), "delete": delete, "next_due": next_due}
    )


async def retry(
    conn: AsyncConnection, job: Claim, worker: str, *, delay: float, error: str
) -> bool:
    result = await conn.execute(
        text(_RETRY),
        {
            **_held(job, worker),
            "delay": delay,
            "error": error[:2000],
        },
    )
    return bool(result.rowcount)


async def release(
    conn: AsyncConnection, job: Claim, worker: str, *, counted: bool, delay: float = 0.0
) -> bool:
    """Give the job back before it is done: to be claimed again after `delay`. `counted`:
    this claim stays an attempt (the run met trouble); otherwise (the worker stops, or the
    job waits on something) it is not."""
    result = await conn.execute(
        text(_RELEASE),
        {
            **_held(job, worker),
            "counted": counted,
            "delay": delay,
        },
    )
    return bool(result.rowcount)


async def seconds_until_due(conn: AsyncConnection, queues: list[str]) -> float | None:
    """Until the next job of these queues is due (negative when overdue); None: none is."""
    seconds = (await conn.execute(text(_NEXT_DUE), {"queues": queues})).scalar()
    return None if seconds is None else float(seconds)

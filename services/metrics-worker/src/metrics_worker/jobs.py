"""Named periodic and debounced work in `scheduled_jobs`, run by one replica at a time.

A job is due when it was asked for (`due_at` passed), when it never ran, or when its last run
finished `period` seconds ago. A replica claims it with a lease and clears `due_at` in the same
statement, so a request arriving during the run sets a new `due_at` and the job runs again
after it. A replica that dies mid-run leaves an expired lease, which makes the job due at once.
"""

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

_ENSURE = text("INSERT INTO scheduled_jobs (name) VALUES (:name) ON CONFLICT (name) DO NOTHING")
# least() ignores NULL: an earlier request keeps its time, so requests fold into one run.
_REQUEST = text(
    """
    INSERT INTO scheduled_jobs (name, due_at)
    VALUES (:name, now() + make_interval(secs => :within))
    ON CONFLICT (name) DO UPDATE SET due_at = least(scheduled_jobs.due_at, excluded.due_at)
    """
)
_CLAIM = text(
    """
    UPDATE scheduled_jobs
    SET claimed_until = now() + make_interval(secs => :lease), claimed_by = :worker, due_at = NULL
    WHERE name = :name
      AND (claimed_until < now()
           OR (claimed_until IS NULL
               AND (due_at <= now()
                    OR last_finished_at IS NULL
                    OR last_finished_at <= now() - make_interval(secs => :period))))
    RETURNING name
    """
)
# The end of the run (not its start): whoever read the job's results before this time, such
# as segment-api's refresh of rules on RFM scores, knows to read them again.
_FINISH = text(
    "UPDATE scheduled_jobs "
    "SET claimed_until = NULL, claimed_by = NULL, last_finished_at = clock_timestamp() "
    "WHERE name = :name AND claimed_by = :worker"
)
_FAIL = text(
    """
    UPDATE scheduled_jobs
    SET claimed_until = NULL, claimed_by = NULL,
        due_at = least(due_at, now() + make_interval(secs => :retry))
    WHERE name = :name AND claimed_by = :worker
    """
)
_NEXT_DUE = text(
    """
    SELECT extract(epoch FROM least(
        due_at,
        coalesce(last_finished_at + make_interval(secs => :period), now()),
        claimed_until
    ) - now())
    FROM scheduled_jobs WHERE name = :name
    """
)


async def ensure_job(engine: AsyncEngine, name: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(_ENSURE, {"name": name})


async def request_job(conn: AsyncConnection, name: str, *, within: float) -> None:
    """Ask for a run at most `within` seconds from now, in the caller's transaction."""
    await conn.execute(_REQUEST, {"name": name, "within": within})


async def claim_job(
    engine: AsyncEngine, name: str, worker: str, *, period: float, lease: float
) -> bool:
    async with engine.begin() as conn:
        params = {"name": name, "worker": worker, "period": period, "lease": lease}
        return (await conn.execute(_CLAIM, params)).first() is not None


async def finish_job(conn: AsyncConnection, name: str, worker: str) -> None:
    """In the transaction of the run's writes, so that both commit together."""
    await conn.execute(_FINISH, {"name": name, "worker": worker})


async def fail_job(engine: AsyncEngine, name: str, worker: str, *, retry: float) -> None:
    async with engine.begin() as conn:
        await conn.execute(_FAIL, {"name": name, "worker": worker, "retry": retry})


async def seconds_until_due(engine: AsyncEngine, name: str, *, period: float) -> float | None:
    async with engine.connect() as conn:
        seconds = (await conn.execute(_NEXT_DUE, {"name": name, "period": period})).scalar()
    return None if seconds is None else float(seconds)

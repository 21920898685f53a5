"""Sync runs in the database. Each is a job of the job engine: claimed with a lease the
worker renews while it works, so a run outlives the broker's consumer timeout and a dead
worker's run is resumed by another; every write of a run holds only for the claim that
holds it (its generation)."""

import json
import uuid
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.types import AnyRow
from segments_shared.jobs.runner import LeaseLost
from segments_shared.jobs.store import Claim, ClaimFilter

MAX_ATTEMPTS = 10


class RunDeleted(Exception):
    """The run's destination or segment was deleted while the run was being carried out: the
    run went with it (the foreign keys cascade), so there is nothing to finish or resume."""

    def __init__(self, run_id: uuid.UUID, cause: str) -> None:
        super().__init__(f"sync run {run_id} was deleted with its {cause}")
        self.cause = cause


def _presence(lock: bool) -> TextClause:
    """Which of a run's row, destination(s) and segment are there; with `lock`, those that are
    stay there until the transaction ends (`FOR KEY SHARE`, the lock a foreign key check
    takes: a deletion waits for it, and plain updates do not)."""
    held = " FOR KEY SHARE" if lock else ""
    # Taken before the transaction writes anything: waiting here, it holds nothing a
    # deletion waits for, so the two cannot deadlock.
    return text(
        f"""
        SELECT
            EXISTS (SELECT 1 FROM destinations WHERE id = :destination_id{held})
                AS destination,
            (CAST(:source_id AS uuid) IS NULL
             OR EXISTS (SELECT 1 FROM destinations WHERE id = :source_id{held}))
                AS source_destination,
            EXISTS (SELECT 1 FROM segments WHERE id = :segment_id{held}) AS segment,
            EXISTS (SELECT 1 FROM sync_runs WHERE id = :run_id) AS run
        """
    )


_PRESENT = _presence(lock=False)
_PRESENT_HELD = _presence(lock=True)


async def _missing(conn: AsyncConnection, run: AnyRow, statement: TextClause) -> str | None:
    params = {
        "run_id": run.id,
        "destination_id": run.destination_id,
        "source_id": run.source_destination_id,
        "segment_id": run.segment_id,
    }
    present = (await conn.execute(statement, params)).one()
    if not present.destination:
        return "destination"
    if not present.segment:
        return "segment"
    if not present.source_destination:
        return "source destination"
    if not present.run:
        return "row"  # deleted by hand: nothing the API does
    return None


async def deleted_with(conn: AsyncConnection, run: AnyRow) -> str | None:
    """What the run was deleted with (`destination`, `segment`, `source destination`), or
    None while the run is there."""
    return await _missing(conn, run, _PRESENT)


async def hold_target(conn: AsyncConnection, run: AnyRow) -> None:
    """First in every transaction that writes for a run: keep its segment and destination(s),
    and so the run, from being deleted until the transaction ends, or raise RunDeleted if
    they already were. Otherwise a write could meet a deletion half-way: a foreign key
    violation, or record rows written for a destination after its deletion emptied its
    record (a deletion waiting for this lock deletes them; `segment.deleted` comes after)."""
    cause = await _missing(conn, run, _PRESENT_HELD)
    if cause is not None:
        raise RunDeleted(run.id, cause)


# A run is a job of the engine (segments_shared/jobs), queue `sync_run`, keyed by its id. It is
# claimed with its segment and destination(s) held (KEY SHARE), or skipped while one is being
# deleted (a deletion holds it FOR UPDATE). Otherwise a deletion could lock the segment after
# the claim's lock on the job, and the two deadlock: its cascade waits for the job, the
# claim's next update for its cascade.
QUEUE = "sync_run"
CLAIM_FILTER = ClaimFilter(
    join=(
        "JOIN sync_runs r ON r.id = j.sync_run_id "
        "JOIN segments s ON s.id = r.segment_id "
        "JOIN destinations d ON d.id = r.destination_id"
    ),
    where=(
        "r.status IN ('queued', 'running') AND (r.source_destination_id IS NULL OR EXISTS ("
        "SELECT 1 FROM destinations source WHERE source.id = r.source_destination_id "
        "FOR KEY SHARE SKIP LOCKED))"
    ),
    locks="FOR KEY SHARE OF r, s, d SKIP LOCKED",
)
_RUNNING = text(
    """
    WITH started AS (
        UPDATE sync_runs r
        SET status = 'running', started_at = coalesce(r.started_at, now()),
            attempts = c.attempts
        FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS c(id, attempts)
        WHERE r.id = c.id
        RETURNING r.id, r.segment_id, r.destination_id
    )
    UPDATE destination_segments ds SET state = 'syncing', last_run_id = started.id
    FROM started
    WHERE ds.segment_id = started.segment_id AND ds.destination_id = started.destination_id
    """
)
_HELD = """
    EXISTS (SELECT 1 FROM jobs WHERE queue = 'sync_run' AND key = :key
            AND generation = :generation AND lease_owner = :worker)
"""


async def mark_running(conn: AsyncConnection, jobs: list[Claim]) -> None:
    """In the claim's transaction: the runs show `running` (and their attempts), their
    segments `syncing`."""
    await conn.execute(
        _RUNNING,
        {"ids": [uuid.UUID(job.key) for job in jobs], "attempts": [job.attempts for job in jobs]},
    )


async def load_run(conn: AsyncConnection, run_id: uuid.UUID) -> AnyRow | None:
    return (
        await conn.execute(text("SELECT * FROM sync_runs WHERE id = :id"), {"id": run_id})
    ).first()


async def save_progress(
    conn: AsyncConnection,
    run_id: uuid.UUID,
    job: Claim,
    worker: str,
    stats: dict[str, int],
    checkpoint: dict[str, Any],
) -> None:
    """Checkpoint in the caller's transaction, which also records what the batch changed;
    only while the run's job is still this claim's (LeaseLost otherwise)."""
    result = await conn.execute(
        text(
            "UPDATE sync_runs SET stats = CAST(:stats AS jsonb), "
            "checkpoint = CAST(:checkpoint AS jsonb) "
            f"WHERE id = :id AND status = 'running' AND {_HELD}"
        ),
        {
            "id": run_id,
            "key": job.key,
            "generation": job.generation,
            "worker": worker,
            "stats": json.dumps(stats),
            "checkpoint": json.dumps(checkpoint),
        },
    )
    if not result.rowcount:
        raise LeaseLost(str(run_id))


async def record_failures(
    conn: AsyncConnection, run_id: uuid.UUID, failures: dict[tuple[str, str], str]
) -> int:
    """Records the destination rejected, keyed by (operation, record); a round sent again
    after a restart records each once. Returns how many are new."""
    if not failures:
        return 0
    result = await conn.execute(
        text(
            """
            INSERT INTO sync_run_failures (sync_run_id, record, operation, reason)
            SELECT :run_id, t.record, t.operation, t.reason
            FROM unnest(CAST(:records AS text[]), CAST(:operations AS text[]),
                        CAST(:reasons AS text[])) AS t(record, operation, reason)
            WHERE NOT EXISTS (
                SELECT 1 FROM sync_run_failures f
                WHERE f.sync_run_id = :run_id AND f.record = t.record
                  AND f.operation = t.operation)
            """
        ),
        {
            "run_id": run_id,
            "records": [record for _, record in failures],
            "operations": [operation for operation, _ in failures],
            "reasons": [reason[:2000] for reason in failures.values()],
        },
    )
    return int(result.rowcount or 0)


async def finish_run(
    conn: AsyncConnection,
    run: AnyRow,
    job: Claim,
    worker: str,
    *,
    status: str,
    stats: dict[str, int],
    error: str | None,
) -> bool:
    result = await conn.execute(
        text(
            "UPDATE sync_runs SET status = :status, finished_at = now(), "
            "stats = CAST(:stats AS jsonb), error = :error "
            f"WHERE id = :id AND status = 'running' AND {_HELD}"
        ),
        {
            "id": run.id,
            "key": job.key,
            "generation": job.generation,
            "worker": worker,
            "status": status,
            "stats": json.dumps(stats),
            "error": error,
        },
    )
    if not result.rowcount:
        return False
    succeeded = status in ("succeeded", "partial")
    await conn.execute(
        text(
            """
            UPDATE destination_segments
            SET state = :state,
                last_synced_at = CASE WHEN :succeeded THEN now() ELSE last_synced_at END,
                last_success_run_id = CASE WHEN :succeeded THEN :run_id
                                           ELSE last_success_run_id END
            WHERE segment_id = :segment_id AND destination_id = :destination_id
            """
        ),
        {
            "state": "synced" if succeeded else "failed",
            "succeeded": succeeded,
            "run_id": run.id,
            "segment_id": run.segment_id,
            "destination_id": run.destination_id,
        },
    )
    return True


async def load_target(conn: AsyncConnection, run: AnyRow) -> AnyRow | None:
    """The run's segment (its name, whether it is active) and destination, and what we
    remember of the remote segment."""
    statement = text(
        """
        SELECT s.name AS segment_name, s.active AS segment_active, d.type, d.config,
               d.secrets, d.account_key,
               ds.remote_id, ds.remote_name
        FROM segments s
        JOIN destinations d ON d.id = :destination_id
        LEFT JOIN destination_segments ds
               ON ds.segment_id = s.id AND ds.destination_id = d.id
        WHERE s.id = :segment_id
        """
    )
    params = {"segment_id": run.segment_id, "destination_id": run.destination_id}
    return (await conn.execute(statement, params)).first()


async def promotion_source(conn: AsyncConnection, run: AnyRow) -> AnyRow | None:
    """What the promotion copies from: the source's remote segment, its last successful
    run, and the status of its latest run of this segment."""
    statement = text(
        """
        SELECT ds.remote_id, ds.remote_name, ds.last_success_run_id,
               (SELECT r.status FROM sync_runs r
                WHERE r.segment_id = ds.segment_id AND r.destination_id = ds.destination_id
                ORDER BY r.seq DESC LIMIT 1) AS latest_status
        FROM destination_segments ds
        WHERE ds.segment_id = :segment_id AND ds.destination_id = :source_id
        """
    )
    params = {"segment_id": run.segment_id, "source_id": run.source_destination_id}
    return (await conn.execute(statement, params)).first()


async def remember_remote(
    conn: AsyncConnection, run: AnyRow, remote_id: str, remote_name: str
) -> None:
    await conn.execute(
        text(
            """
            INSERT INTO destination_segments
                (segment_id, destination_id, remote_id, remote_name, state, last_run_id)
            VALUES (:segment_id, :destination_id, :remote_id, :remote_name, 'syncing', :run_id)
            ON CONFLICT (segment_id, destination_id) DO UPDATE
            SET remote_id = EXCLUDED.remote_id, remote_name = EXCLUDED.remote_name
            """
        ),
        {
            "segment_id": run.segment_id,
            "destination_id": run.destination_id,
            "remote_id": remote_id,
            "remote_name": remote_name,
            "run_id": run.id,
        },
    )


async def remote_owner(conn: AsyncConnection, run: AnyRow, remote_id: str) -> str | None:
    """The name of another segment that syncs to this remote segment on this destination."""
    name: str | None = (
        await conn.execute(
            text(
                """
                SELECT s.name FROM destination_segments ds
                JOIN segments s ON s.id = ds.segment_id
                WHERE ds.destination_id = :destination_id AND ds.remote_id = :remote_id
                  AND ds.segment_id <> :segment_id
                LIMIT 1
                """
            ),
            {
                "destination_id": run.destination_id,
                "remote_id": remote_id,
                "segment_id": run.segment_id,
            },
        )
    ).scalar_one_or_none()
    return name

"""An incremental sync after 1,000 membership changes in a 1,000,000-member segment (issue:
under 2 s), to the fake Mailchimp in its own process.

    python -m bench.sync_incremental [--changes 1000]

Set-up (not the figure): the data set with every customer reachable, a first sync of all
1,000,000 members. Then half the changes remove members and half add new customers, and a
second sync is requested and timed from its request to its end. Baselines of the same run:
one plain pass over the segment joined to its customers (the least any diff must read), and
the counts the first sync-worker computed with anti-joins on keys (the query it replaced).
"""

import argparse
import asyncio
import time
import uuid

import asyncpg

from bench.dataset import drop
from bench.sync_setup import (
    Worker,
    add_destination,
    load,
    reachable_store,
    request_run,
    start_fake,
    start_worker,
    wait_run,
)
from segments_shared.config import DatabaseSettings
from segments_shared.db.engine import asyncpg_dsn, create_engine
from segments_shared.lifecycle import freeze_startup_objects
from sync_worker import runs

DATABASE = "segments_bench_sync_incremental"

ONE_PASS = """
    SELECT count(*) FROM segment_members m JOIN customers c ON c.id = m.customer_id
    WHERE m.segment_id = $1 AND c.email IS NOT NULL AND c.email_status = 'subscribed'
"""
KEYED_ANTI_JOIN_COUNTS = """
    WITH desired AS MATERIALIZED (
        SELECT DISTINCT c.email AS key
        FROM segment_members m JOIN customers c ON c.id = m.customer_id
        WHERE m.segment_id = $1 AND c.email IS NOT NULL AND c.email_status = 'subscribed'),
    held AS MATERIALIZED (
        SELECT member_key AS key FROM destination_members
        WHERE destination_id = $2 AND segment_id = $1)
    SELECT (SELECT count(*) FROM desired d WHERE NOT EXISTS
                (SELECT 1 FROM held h WHERE h.key = d.key)),
           (SELECT count(*) FROM held h WHERE NOT EXISTS
                (SELECT 1 FROM desired d WHERE d.key = h.key))
"""


async def change_members(url: str, segment_id: uuid.UUID, changes: int) -> None:
    """Half the changes remove members, half add new customers, as the API records them."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        async with conn.transaction():
            removed = await conn.fetchval(
                "WITH gone AS (DELETE FROM segment_members WHERE segment_id = $1 AND "
                "customer_id IN (SELECT customer_id FROM segment_members WHERE segment_id = $1 "
                "ORDER BY customer_id LIMIT $2 OFFSET 1000) RETURNING 1) SELECT count(*) FROM gone",
                segment_id,
                changes // 2,
            )
            added = await conn.fetchval(
                "WITH new AS (INSERT INTO customers (external_id, email, email_status) "
                "SELECT 'new' || g, 'new' || g || '@example.com', 'subscribed' "
                "FROM generate_series(1, $2) g RETURNING id), "
                "joined AS (INSERT INTO segment_members (segment_id, customer_id) "
                "SELECT $1, id FROM new RETURNING 1) SELECT count(*) FROM joined",
                segment_id,
                changes - changes // 2,
            )
            await conn.execute(
                "UPDATE segments SET member_count = member_count + $2 - $3, "
                "membership_version = membership_version + 1 WHERE id = $1",
                segment_id,
                added,
                removed,
            )
    finally:
        await conn.close()


async def wait_idle(worker: Worker) -> None:
    deadline = time.monotonic() + 120
    while worker.runner.running(runs.QUEUE) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def timed(url: str, statement: str, *args: object) -> float:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        started = time.perf_counter()
        await conn.fetch(statement, *args)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def main(changes: int) -> None:
    # The collector settings the sync-worker runs with; both sides share this process.
    freeze_startup_objects()
    print(f"load before: {await load()}")
    url, segment_id = await reachable_store(DATABASE)
    engine = create_engine(DatabaseSettings(database_url=url), pool_size=2)
    fake = await start_fake()
    worker = start_worker(url)
    try:
        destination_id = await add_destination(engine, fake.url)
        first = await request_run(engine, segment_id, destination_id)
        worker.runner.wake()
        run = await wait_run(engine, first)
        assert run.status == "succeeded", (run.status, run.error)
        print(f"set-up: first sync of {run.stats['added']:,} members done")
        await wait_idle(worker)  # its clean-up (VACUUM of the record) included

        await change_members(url, segment_id, changes)
        requested = time.perf_counter()
        second = await request_run(engine, segment_id, destination_id)
        worker.runner.wake()
        run = await wait_run(engine, second)
        wall = time.perf_counter() - requested
        assert run.status == "succeeded", (run.status, run.error)
        claimed = (run.finished_at - run.started_at).total_seconds()
        stats = run.stats
        one_pass = await timed(url, ONE_PASS, segment_id)
        keyed = await timed(url, KEYED_ANTI_JOIN_COUNTS, segment_id, destination_id)
    finally:
        await worker.stop()
        await fake.stop()
        await engine.dispose()
    print(
        f"changes: {changes:,} in a segment of 1,000,000; planned +{stats['planned_add']:,} "
        f"-{stats['planned_remove']:,}, sent +{stats['added']:,} -{stats['removed']:,}"
    )
    print(
        f"incremental sync:                 {wall:.2f} s from request to finish "
        f"({claimed:.2f} s claimed)"
    )
    print(f"baseline, one pass over segment:  {one_pass:.2f} s")
    print(f"old planner's anti-join counts:   {keyed:.2f} s (counts only, nothing sent)")
    print(f"sync / one pass:                  {wall / one_pass:.2f}")
    print(f"load after: {await load()}")
    await drop(DATABASE)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.changes))

"""A first sync of 1,000,000 reachable members to the fake Mailchimp on loopback (issue:
25,000 members/s or more, and at least half the rate of a bare client), beside a bare httpx
client sending the same requests (batch subscribe, then add to the static segment) with the
same batch size (500) and concurrency (10), in the same run.

    python -m bench.sync_throughput [--skip-bare] [--every N]

`--every 10` syncs every tenth customer (100,000) for a quicker look.

Each side gets a fresh fake Mailchimp in its own process (`python -m tests.fakes`), so the
fake never shares this event loop and both start from an empty audience. The sync-worker's
runner runs in this process: it claims the run, plans it in SQL, and sends and records it
round by round under the shared limiter, as the service does.
"""

import argparse
import asyncio
import resource
import time

import httpx

from bench.dataset import drop
from bench.sync_setup import (
    API_KEY,
    BATCH,
    CONCURRENCY,
    LIST_ID,
    add_destination,
    load,
    reachable_store,
    request_run,
    start_fake,
    start_worker,
    wait_run,
)
from segments_shared.config import DatabaseSettings
from segments_shared.db.engine import create_engine
from segments_shared.lifecycle import freeze_startup_objects

DATABASE = "segments_bench_sync_throughput"


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def bare_client(members: int) -> float:
    """Members per second of a plain client doing the same two calls per batch."""
    fake = await start_fake()
    try:
        async with httpx.AsyncClient(
            base_url=f"{fake.url}/3.0",
            auth=("bench", API_KEY),
            limits=httpx.Limits(max_connections=CONCURRENCY),
            timeout=120,
        ) as client:
            created = await client.post(
                f"/lists/{LIST_ID}/segments", json={"name": "Bare", "static_segment": []}
            )
            segment = created.json()["id"]
            batches = iter(range(1, members + 1, BATCH))

            async def send() -> None:
                for first in batches:
                    emails = [
                        f"customer{i}@example.com"
                        for i in range(first, min(first + BATCH, members + 1))
                    ]
                    subscribed = await client.post(
                        f"/lists/{LIST_ID}",
                        json={
                            "members": [
                                {
                                    "email_address": email,
                                    "status_if_new": "subscribed",
                                    "merge_fields": {"FNAME": "Ada", "LNAME": "Lovelace"},
                                }
                                for email in emails
                            ],
                            "update_existing": True,
                        },
                    )
                    subscribed.raise_for_status()
                    added = await client.post(
                        f"/lists/{LIST_ID}/segments/{segment}", json={"members_to_add": emails}
                    )
                    added.raise_for_status()

            started, cpu = time.perf_counter(), process_cpu()
            await asyncio.gather(*(send() for _ in range(CONCURRENCY)))
            elapsed = time.perf_counter() - started
            print(f"bare client CPU: {(process_cpu() - cpu) / members * 1e6:.1f} µs per member")
            return members / elapsed
    finally:
        await fake.stop()


async def main(skip_bare: bool, every: int) -> None:
    # The collector settings the sync-worker runs with; both sides share this process.
    freeze_startup_objects()
    print(f"load before: {await load()}")
    prepared = time.perf_counter()
    url, segment_id = await reachable_store(DATABASE, every)
    print(f"data set ready in {time.perf_counter() - prepared:.0f} s")
    engine = create_engine(DatabaseSettings(database_url=url), pool_size=2)
    try:
        async with engine.connect() as conn:
            members = int(
                (
                    await conn.exec_driver_sql(
                        f"SELECT count(*) FROM segment_members WHERE segment_id = '{segment_id}'"
                    )
                ).scalar_one()
            )
        bare = 0.0 if skip_bare else await bare_client(members)
        fake = await start_fake()
        worker = start_worker(url)
        try:
            destination_id = await add_destination(engine, fake.url)
            requested, cpu = time.perf_counter(), process_cpu()
            run_id = await request_run(engine, segment_id, destination_id)
            worker.runner.wake()
            run = await wait_run(engine, run_id)
            wall = time.perf_counter() - requested
            print(f"sync-worker CPU: {(process_cpu() - cpu) / members * 1e6:.1f} µs per member")
        finally:
            await worker.stop()
            await fake.stop()
        assert run.status == "succeeded", (run.status, run.error)
        sent = run.stats["added"]
        claimed = (run.finished_at - run.started_at).total_seconds()
        print(f"members: {members:,} reachable, batch {BATCH}, concurrency {CONCURRENCY}")
        if not skip_bare:
            print(f"bare httpx client:      {bare:,.0f} members/s")
        print(
            f"sync-worker:            {sent / wall:,.0f} members/s "
            f"({sent:,} sent in {wall:.1f} s from request to finish; "
            f"{claimed:.1f} s claimed, planning included)"
        )
        if not skip_bare:
            print(f"sync-worker / bare:     {sent / wall / bare:.2f}")
        print(f"load after: {await load()}")
    finally:
        await engine.dispose()
        await drop(DATABASE)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-bare", action="store_true", help="only the sync-worker")
    parser.add_argument("--every", type=int, default=1, help="sync every N-th customer")
    args = parser.parse_args()
    asyncio.run(main(args.skip_bare, args.every))

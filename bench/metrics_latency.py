"""From a membership change committed through the API to `metrics.updated` on the bus (issue 3:
p95 under 1 s on an idle system, over 200 changes), with 1,000,000 customers and 5,000,000
orders.

    python -m bench.metrics_latency [--every 100] [--changes 200] [--pause 0.2]

Clones the data set (bench/dataset.py) and creates a segment of every `every`-th customer
(10,000 members by default) and deactivates the default rule segments (so that segment-api's
rule refresher stays idle), then starts segment-api and metrics-worker as processes (the
installed console commands, default settings) and waits for their start-up work (the first KPIs
and the first RFM run over every customer). Then, one change at a time: add one more customer
through `POST /v1/segments/{id}/members`, and wait for the `metrics.updated` of that segment
whose member count includes it. Latency runs from just before the request is sent (so it
includes the request and its commit) to the event's arrival in a queue bound to the events
exchange. Beside it, in the same run: the HTTP call alone, and the KPI statement alone on that
segment.
"""

import argparse
import asyncio
import json
import os
import statistics
import time

import aio_pika
import httpx
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy import text

from bench.common import (
    AMQP_URL,
    bench_prefix,
    free_port,
    percentile,
    remove_topology,
    start_service,
    summary_ms,
)
from bench.dataset import DatasetSpec, clone, create_segment, drop
from metrics_worker.kpis import compute_segment_kpis
from segments_shared.bus.topology import Topology, declare_all
from segments_shared.config import DatabaseSettings
from segments_shared.db.engine import create_engine

DATABASE = "segments_bench_metrics_latency"
KEY = "sk_bench_admin_key_0123456789"


async def main(every: int, changes: int, pause: float) -> None:
    spec = DatasetSpec()
    url = await clone(spec, DATABASE)
    segment_id = await create_segment(url, "Bench latency", every=every)
    prefix = bench_prefix()
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await declare_all(channel, Topology(prefix))
    api_port, worker_port = free_port(), free_port()
    env = {
        **os.environ,
        "SEGMENTS_DATABASE_URL": url,
        "SEGMENTS_AMQP_URL": AMQP_URL,
        "SEGMENTS_BUS_PREFIX": prefix,
        "SEGMENTS_API_PORT": str(api_port),
        "SEGMENTS_METRICS_WORKER_PORT": str(worker_port),
        "SEGMENTS_BOOTSTRAP_API_KEY": KEY,
        "SEGMENTS_LOG_LEVEL": "WARNING",
    }
    engine = create_engine(DatabaseSettings(database_url=url), pool_size=2)
    async with engine.begin() as conn:
        # An idle system: segment-api's rule refresher would otherwise compute the default rule
        # segments (up to 1,000,000 members each), and this worker their KPIs, meanwhile.
        await conn.execute(text("UPDATE segments SET active = false WHERE kind = 'default'"))
    processes = [
        await start_service("segment-api", env, api_port),
        await start_service("metrics-worker", env, worker_port),
    ]
    # Member count the segment will have -> when its metrics.updated arrived.
    waiting: dict[int, asyncio.Future[float]] = {}

    async def on_message(message: AbstractIncomingMessage) -> None:
        received = time.perf_counter()
        event = json.loads(message.body)
        if event["subject"] == str(segment_id):
            arrival = waiting.get(event["data"]["metrics"]["customers"])
            if arrival is not None and not arrival.done():
                arrival.set_result(received)
        await message.ack()

    try:
        # Start-up work first: the first KPIs of every segment, the first RFM run.
        settled = text(
            "SELECT NOT EXISTS (SELECT 1 FROM metrics_changes) AND EXISTS "
            "(SELECT 1 FROM jobs WHERE queue = 'rfm' AND last_finished_at IS NOT NULL)"
        )
        while True:
            async with engine.connect() as conn:
                if (await conn.execute(settled)).scalar_one():
                    break
            await asyncio.sleep(0.5)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(Topology(prefix).events_exchange, routing_key="metrics.updated")
        await queue.consume(on_message)
        async with engine.connect() as conn:
            members = (await compute_segment_kpis(conn, segment_id))["customers"]
        sql_times = []
        for _ in range(20):
            async with engine.connect() as conn:
                started = time.perf_counter()
                await compute_segment_kpis(conn, segment_id)
                sql_times.append(time.perf_counter() - started)

        latencies: list[float] = []
        http_times: list[float] = []
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{api_port}",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=30,
        ) as api:
            for k in range(changes):
                # Customers outside the segment (ids 1 more than a multiple of `every`).
                external_id = f"c{k * every + 2:07d}"
                arrival = waiting[members + k + 1] = asyncio.get_running_loop().create_future()
                started = time.perf_counter()
                response = await api.post(
                    f"/v1/segments/{segment_id}/members", json={"external_ids": [external_id]}
                )
                http_times.append(time.perf_counter() - started)
                assert response.json()["added"] == 1, response.text
                latencies.append(await asyncio.wait_for(arrival, 30) - started)
                await asyncio.sleep(pause)
    finally:
        for process in processes:
            process.terminate()
            await process.wait()
        await connection.close()
        await engine.dispose()
        await remove_topology(prefix)
        await drop(DATABASE)
    print(f"data set: {spec.customers:,} customers, {spec.orders:,} orders")
    print(f"segment: {members:,} members; {changes} changes, one at a time, {pause} s apart")
    print(f"API commit -> metrics.updated on the bus: {summary_ms(latencies)}")
    print(f"baseline, HTTP POST .../members alone:    {summary_ms(http_times)}")
    print(f"baseline, KPI statement alone:            {summary_ms(sql_times)}")
    parts = percentile(http_times, 0.95) + statistics.median(sql_times)
    print(f"p95 end to end / (p95 HTTP + median SQL): {percentile(latencies, 0.95) / parts:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--every", type=int, default=100, help="members: every n-th customer")
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--pause", type=float, default=0.2)
    args = parser.parse_args()
    asyncio.run(main(args.every, args.changes, args.pause))

"""From an API commit to the event on the queue, at a steady 500 events/s (issue: p99 under
200 ms). Baseline: a bare aio-pika publish-to-consume round trip at the same rate.

    python -m bench.event_latency [--rate 500] [--seconds 20]

segment-api and sync-worker run as their own processes (the installed console commands),
as deployed: the outbox relay of the sync-worker leads and segment-api's stands by
(shared/bus/leadership.py; with segment-api alone, its relay publishes from the event loop
that serves the requests and falls behind at this rate);
`bench.loadgen`, a third process, drives `PUT /v1/customers/{id}` open-loop at the given rate
over 32 keep-alive connections (after 3 s of the same load, unmeasured), while this process
consumes `customer.changed` from the metrics-worker's queue, measuring receive time minus the
event's `time` (set in the request's transaction, just before its commit).
"""

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from bench.common import (
    AMQP_URL,
    api_env,
    bench_prefix,
    free_port,
    fresh_database,
    remove_topology,
    start_service,
    summary_ms,
    wait_until,
)
from segments_shared.bus.topology import Topology, declare_all

KEY = "sk_bench_admin_key_0123456789"


async def start_api(url: str, prefix: str, port: int) -> asyncio.subprocess.Process:
    return await start_service("segment-api", api_env(url, prefix, port, KEY), port)


async def start_sync_worker(url: str, prefix: str) -> asyncio.subprocess.Process:
    port = free_port()
    env = {**api_env(url, prefix, free_port(), KEY), "SEGMENTS_SYNC_WORKER_PORT": str(port)}
    return await start_service("sync-worker", env, port)


async def paced(
    rate: float, seconds: float, fire: Callable[[int], Coroutine[Any, Any, None]]
) -> list[asyncio.Task[None]]:
    """Start `fire(i)` at a steady rate (open loop: late answers do not slow the schedule)."""
    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(i)))
    return tasks


WARM_UP_SECONDS = 3.0


async def run_generator(port: int, rate: float, seconds: float, prefix: str) -> dict[str, Any]:
    generator = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        f"http://127.0.0.1:{port}",
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
        "--key",
        KEY,
        "--prefix",
        prefix,
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await generator.communicate()
    result: dict[str, Any] = json.loads(output)
    return result


async def api_latencies(
    url: str, prefix: str, rate: float, seconds: float
) -> tuple[list[float], list[float], int]:
    port = free_port()
    worker = await start_sync_worker(url, prefix)
    api = await start_api(url, prefix, port)
    latencies: list[float] = []
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1000)
    queue = await channel.get_queue(Topology(prefix).service_queue("metrics-worker"), ensure=False)
    await queue.purge()

    async def on_message(message: AbstractIncomingMessage) -> None:
        received = time.time()
        event = json.loads(message.body)
        if event["type"] == "customer.changed":
            latencies.append(received - datetime.fromisoformat(event["time"]).timestamp())
        await message.ack()

    tag = await queue.consume(on_message)
    # Unmeasured first: the API's pool opens its connections, statements get prepared.
    await run_generator(port, rate, WARM_UP_SECONDS, "warm")
    await wait_until(lambda: len(latencies) >= int(rate * WARM_UP_SECONDS), within=30)
    latencies.clear()
    # The load comes from another process (bench.loadgen), open loop at the rate.
    result = await run_generator(port, rate, seconds, "bench")
    http_times = [value / 1000 for value in result["latencies_ms"]]
    errors = sum(
        count for status, count in result["statuses"].items() if status not in ("200", "201")
    )
    expected = int(rate * seconds)
    await wait_until(lambda: len(latencies) >= expected - errors, within=30)
    await queue.cancel(tag)
    await connection.close()
    for process in (api, worker):
        process.terminate()
        await process.wait()
    return latencies, http_times, errors


async def broker_latencies(prefix: str, rate: float, seconds: float) -> list[float]:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(Topology(prefix).events_exchange, ensure=False)
    queue = await channel.get_queue(Topology(prefix).service_queue("metrics-worker"), ensure=False)
    await queue.purge()
    latencies: list[float] = []

    async def on_message(message: AbstractIncomingMessage) -> None:
        latencies.append(time.time() - float(message.body))
        await message.ack()

    tag = await queue.consume(on_message)

    async def fire(_: int) -> None:
        await exchange.publish(
            aio_pika.Message(str(time.time()).encode(), delivery_mode=2),
            routing_key="customer.changed",
            mandatory=True,
            timeout=30,
        )

    tasks = await paced(rate, seconds, fire)
    await asyncio.gather(*tasks)
    await wait_until(lambda: len(latencies) >= len(tasks), within=10)
    await queue.cancel(tag)
    await connection.close()
    return latencies


async def main(rate: float, seconds: float) -> None:
    url = await fresh_database("segments_bench_latency")
    prefix = bench_prefix()
    connection = await aio_pika.connect(AMQP_URL)
    await declare_all(await connection.channel(), Topology(prefix))
    await connection.close()
    try:
        baseline = await broker_latencies(prefix, rate, seconds)
        latencies, http_times, errors = await api_latencies(url, prefix, rate, seconds)
    finally:
        await remove_topology(prefix)
    print(f"rate: {rate:.0f} events/s for {seconds:.0f} s")
    print(f"bare broker publish -> consume: {summary_ms(baseline)} ({len(baseline)} messages)")
    print(f"API commit -> event on queue:   {summary_ms(latencies)} ({len(latencies)} events)")
    print(f"HTTP PUT /v1/customers/{{id}}:    {summary_ms(http_times)} ({errors} errors)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.rate, args.seconds))

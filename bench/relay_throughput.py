"""Outbox relay throughput against a bare aio-pika publisher (issue: the relay publishes
5,000 events/s or more with confirms and `mandatory`, and at least half the bare rate with
the same number of confirms in flight).

    python -m bench.relay_throughput [--events 50000] [--in-flight 500] [--rounds 3]

Rounds alternate the two publishers, and the medians are compared, so a burst of load from
elsewhere on the machine does not land on one side only.
"""

import argparse
import asyncio
import statistics
import time

import aio_pika
from sqlalchemy import text

from bench.common import AMQP_URL, bench_prefix, fresh_database, remove_topology
from segments_shared.bus.outbox import add_events
from segments_shared.bus.relay import OutboxRelay
from segments_shared.bus.topology import Topology, declare_all, declare_events_exchange
from segments_shared.config import DatabaseSettings
from segments_shared.db.engine import create_engine
from segments_shared.events import CustomerChanged, CustomerIds, event_json
from segments_shared.lifecycle import freeze_startup_objects


def sample_events(count: int) -> list[CustomerChanged]:
    return [
        CustomerChanged(
            source="bench",
            subject=f"c{i}",
            data=CustomerIds(customer_external_ids=[f"c{i}"]),
            correlationid=f"bench-{i}",
        )
        for i in range(count)
    ]


async def bare_publisher(prefix: str, events: list[CustomerChanged], in_flight: int) -> float:
    """Rate of a plain aio-pika publisher: same bodies, confirms, mandatory, same window."""
    import json

    bodies = [json.dumps(event_json(event)).encode() for event in events]
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await declare_events_exchange(channel, Topology(prefix))
        started = time.perf_counter()
        for start in range(0, len(bodies), in_flight):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(  # what the relay sends (relay.build_message)
                            body,
                            content_type="application/cloudevents+json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=events[start + offset].id,
                        ),
                        routing_key="customer.changed",
                        mandatory=True,
                        timeout=30,
                    )
                    for offset, body in enumerate(bodies[start : start + in_flight])
                )
            )
        return len(bodies) / (time.perf_counter() - started)
    finally:
        await connection.close()


async def purge(prefix: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        for name in Topology(prefix).all_queues():
            await (await channel.get_queue(name, ensure=False)).purge()
    finally:
        await connection.close()


async def relay_rate(url: str, prefix: str, events: list[CustomerChanged], batch: int) -> float:
    engine = create_engine(DatabaseSettings(database_url=url), pool_size=4)
    try:
        async with engine.begin() as conn:
            for start in range(0, len(events), 5000):
                await add_events(conn, events[start : start + 5000])
        relay = OutboxRelay(engine, AMQP_URL, Topology(prefix), batch_size=batch)
        started = time.perf_counter()
        task = asyncio.create_task(relay.run())
        while True:
            async with engine.connect() as conn:
                left = (
                    await conn.execute(
                        text("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    )
                ).scalar_one()
            if left == 0:
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        relay.stop()
        await task
        return len(events) / elapsed
    finally:
        await engine.dispose()


async def main(events_count: int, in_flight: int, rounds: int) -> None:
    # The collector settings segment-api runs its relay with; both sides share this process.
    freeze_startup_objects()
    url = await fresh_database("segments_bench_relay")
    prefix = bench_prefix()
    connection = await aio_pika.connect(AMQP_URL)
    await declare_all(await connection.channel(), Topology(prefix))
    await connection.close()
    bare_rates, relay_rates = [], []
    try:
        for _ in range(rounds):
            events = sample_events(events_count)
            bare_rates.append(await bare_publisher(prefix, events, in_flight))
            await purge(prefix)
            relay_rates.append(await relay_rate(url, prefix, events, in_flight))
            await purge(prefix)
        bare, relay = statistics.median(bare_rates), statistics.median(relay_rates)
        print(f"events: {events_count} per round, {rounds} rounds, confirms in flight: {in_flight}")
        print(
            f"bare aio-pika publisher: {bare:,.0f} events/s (median; rounds "
            f"{', '.join(f'{r:,.0f}' for r in bare_rates)})"
        )
        print(
            f"outbox relay:            {relay:,.0f} events/s (median; rounds "
            f"{', '.join(f'{r:,.0f}' for r in relay_rates)}), claim, publish, mark sent"
        )
        print(f"relay / bare:            {relay / bare:.2f}")
    finally:
        await remove_topology(prefix)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--in-flight", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.in_flight, args.rounds))

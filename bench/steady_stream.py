"""A steady stream of writes through the three services on the benchmark data set (100 order
writes/s, 50 customer writes/s and a membership change every 2 s for 3 minutes, by default),
with the CPU of every process and of PostgreSQL, the backlogs, and the KPI and refresh lags;
with `--ladder`, rising order rates until the system breaks.

    python -m bench.steady_stream [--customers 1000000] [--orders 5000000] \\
        [--orders-rate 100] [--customers-rate 50] [--members-every 2] [--seconds 180]
    python -m bench.steady_stream --ladder [--rates 25,50,100,200,300,500,700,1000] \\
        [--step-seconds 60]

Clones the data set (bench/dataset.py), adds a manual segment (`--manual-members`, every
n-th customer), starts segment-api, sync-worker and metrics-worker as processes with default
settings and a bus prefix of their own, and waits for their start-up work (the five default
rule segments computed, every segment's KPIs, the first RFM run and KPI check). Then
bench/stream_load.py, a process of its own, sends the load open loop (latency from each
request's due time), while this process samples every second (bench/stream_probe.py) and
receives `metrics.updated` from a queue of its own. Afterwards, with the services stopped,
the baseline: the bare single-row `INSERT` of the same kind of order rows into the same
table at the same rate from a plain asyncpg loop, its PostgreSQL CPU measured the same way.

Prints the figures and the issue's targets, then one JSON line. Service logs stay in the
directory printed at the start.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy.engine import make_url

from bench import stream_report, stream_services, stream_verdict
from bench.common import AMQP_URL, bench_prefix, load_average, remove_topology
from bench.dataset import DatasetSpec, clone, create_segment, drop
from bench.stream_figures import MetricsEvent
from bench.stream_load import Plan
from bench.stream_probe import Probe, Sample
from segment_api.rules.settings import RefreshSettings
from segments_shared.bus.topology import Topology, declare_all
from segments_shared.db.engine import asyncpg_dsn

DATABASE = "segments_bench_steady_stream"
KEY = "sk_bench_admin_key_0123456789"
_BARE = (
    "INSERT INTO orders (external_id, customer_id, total, currency, placed_at, status) "
    "VALUES ($1, $2, $3, 'USD', $4, 'placed')"
)


class Events:
    """`metrics.updated` as received: the manual segment's, and a count per segment."""

    def __init__(self, manual: uuid.UUID) -> None:
        self.manual = str(manual)
        self.received: list[MetricsEvent] = []
        self.per_segment: dict[str, int] = {}

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        async with message.process():
            self._take(time.time(), json.loads(message.body))

    def _take(self, received: float, event: dict[str, Any]) -> None:
        subject = str(event.get("subject"))
        self.per_segment[subject] = self.per_segment.get(subject, 0) + 1
        if subject == self.manual:
            self.received.append(
                MetricsEvent(
                    received=received,
                    time=datetime.fromisoformat(event["time"]).timestamp(),
                    correlation_id=event.get("correlationid"),
                    customers=int(event["data"]["metrics"]["customers"]),
                )
            )


async def segments_of(url: str) -> tuple[dict[uuid.UUID, str], set[uuid.UUID]]:
    """Every segment by name, and the rule segments."""
    conn = await asyncpg.connect(asyncpg_dsn(make_url(url)))
    try:
        rows = await conn.fetch("SELECT id, name, definition->>'type' AS type FROM segments")
    finally:
        await conn.close()
    return (
        {row["id"]: row["name"] for row in rows},
        {row["id"] for row in rows if row["type"] == "rule"},
    )


async def run_load(probe: Probe, base: str, plan: Plan) -> dict[str, Any]:
    arguments = {
        "url": base,
        "key": KEY,
        "customers": plan.customers,
        "orders": plan.orders,
        "orders-rate": plan.orders_rate,
        "customers-rate": plan.customers_rate,
        "seconds": plan.seconds,
        "warm-up": plan.warm_up,
        "segment": plan.segment,
        "segment-every": plan.segment_every,
        "members-every": plan.members_every,
        "members-batch": plan.members_batch,
        "first-change": plan.first_change,
        "tag": plan.tag,
    }
    command = [f"--{name}={value}" for name, value in arguments.items()]
    generator = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.stream_load", *command, stdout=asyncio.subprocess.PIPE
    )
    probe.watch("load generator", generator.pid)
    output, _ = await generator.communicate()
    if generator.returncode:
        raise RuntimeError(f"the load generator failed ({generator.returncode})")
    result: dict[str, Any] = json.loads(output)
    return result


async def bare_inserts(url: str, customers: int, rate: float, seconds: float) -> dict[str, Any]:
    """Single-row INSERTs of new orders of existing customers, due at `rate` per second."""
    dsn = asyncpg_dsn(make_url(url))
    conns = [
        await asyncpg.connect(dsn, server_settings={"application_name": "bench-bare"})
        for _ in range(4)
    ]
    due: asyncio.Queue[int | None] = asyncio.Queue()
    rng = random.Random(7)
    inserted = 0

    async def insert(conn: asyncpg.Connection) -> None:
        nonlocal inserted
        while (index := await due.get()) is not None:
            cents = int(rng.lognormvariate(8.5, 0.8))
            total = Decimal(cents).scaleb(-2)
            customer = rng.randint(1, customers)
            await conn.execute(_BARE, f"b{index}", customer, total, datetime.now(UTC))
            inserted += 1

    workers = [asyncio.create_task(insert(conn)) for conn in conns]
    started, wall = time.perf_counter(), time.time()
    for index in range(int(rate * seconds)):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        due.put_nowait(index)
    for _ in workers:
        due.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - started
    for conn in conns:
        await conn.close()
    return {"start": wall, "end": wall + elapsed, "inserted": inserted, "rate": inserted / elapsed}


def baseline_figures(bare: dict[str, Any], samples: list[Sample]) -> dict[str, Any]:
    stretch = stream_report.within(samples, bare["start"], bare["end"])
    seconds = stream_report.database_seconds(stretch)
    return {
        **bare,
        "database_seconds": seconds,
        "ms_per_row": 1000 * seconds / bare["inserted"] if bare["inserted"] else math.nan,
    }


def write_samples(path: Path, samples: list[Sample]) -> None:
    path.write_text("".join(json.dumps(dataclasses.asdict(sample)) + "\n" for sample in samples))


def plans(args: argparse.Namespace, segment: uuid.UUID, every: int) -> list[Plan]:
    rates = [float(r) for r in args.rates.split(",")] if args.ladder else [args.orders_rate]
    seconds = args.step_seconds if args.ladder else args.seconds
    steps, first_change = [], 0
    for step, rate in enumerate(rates):
        # Later steps keep a short warm-up too: the new generator's start stays out.
        warm_up = args.warm_up if step == 0 else min(2.0, args.warm_up)
        steps.append(
            Plan(
                customers=args.customers,
                orders=args.orders,
                orders_rate=rate,
                customers_rate=rate / 2 if args.ladder else args.customers_rate,
                seconds=seconds,
                warm_up=warm_up,
                segment=str(segment),
                segment_every=every,
                members_every=args.members_every,
                members_batch=args.members_batch,
                first_change=first_change,
                tag=str(step),
            )
        )
        if args.members_every > 0:
            first_change += int((warm_up + seconds) / args.members_every)
    return steps


async def main(args: argparse.Namespace) -> None:
    spec = DatasetSpec(customers=args.customers, orders=args.orders)
    every = max(2, spec.customers // args.manual_members)
    # The services run with default settings (stream_services.suite_env), so the default.
    debounce = float(RefreshSettings.model_fields["rule_refresh_debounce_seconds"].default)
    before = load_average()
    print(f"{before}; data set {spec.customers:,} customers, {spec.orders:,} orders", flush=True)
    url = await clone(spec, DATABASE)
    manual = await create_segment(url, "Bench manual", every=every)
    names, rules = await segments_of(url)
    members = spec.customers // every  # ids 1..customers that are multiples of `every`
    prefix = bench_prefix()
    logs = Path(tempfile.mkdtemp(prefix="steady_stream-"))
    print(f"manual segment: {members:,} members (every {every}th customer); logs in {logs}")
    amqp = await aio_pika.connect(AMQP_URL)
    services: list[stream_services.Service] = []
    probe: Probe | None = None
    stop = asyncio.Event()
    sampling: asyncio.Task[None] | None = None
    try:
        channel = await amqp.channel()
        await declare_all(channel, Topology(prefix))
        events = Events(manual)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(Topology(prefix).events_exchange, routing_key="metrics.updated")
        await queue.consume(events.on_message)
        env, ports = stream_services.suite_env(url, prefix, KEY)
        for name, port in ports.items():
            services.append(await stream_services.start(name, env, port, logs))
        settled, left = await stream_services.settle(url, args.settle_timeout)
        unsettled = f"; NOT settled, left: {left}" if left else ""
        print(f"start-up work settled in {settled:.0f} s{unsettled}", flush=True)
        probe = Probe(url, prefix, names, rules, debounce)
        await probe.open()
        for service in services:
            probe.watch(service.name, service.pid)
        sampling = asyncio.create_task(probe.run(stop))
        idle_from = time.time()
        await asyncio.sleep(args.idle_seconds)
        idle = stream_report.idle_figures(probe.samples, idle_from, time.time())
        stream_report.print_idle(idle)
        base = f"http://127.0.0.1:{ports['segment-api']}"
        results, steps = [], []
        if args.ladder:
            print("\n" + stream_verdict.LADDER_HEAD, flush=True)
        for plan in plans(args, manual, every):
            counters = await stream_services.scrape(services)
            load = await run_load(probe, base, plan)
            results.append(load)
            await asyncio.sleep(1.5)  # the last samples of the step
            counters = stream_services.moved(counters, await stream_services.scrape(services))
            delays = {names[uuid.UUID(k)]: v for k, v in probe.tracker.delays.items()}
            figures = stream_report.figures(
                f"{plan.orders_rate:.0f} orders/s, {plan.customers_rate:.0f} customers/s",
                load,
                probe.samples,
                events.received,
                delays,
                members=members,
                batch=args.members_batch,
                debounce=debounce,
            )
            figures.counters = counters
            steps.append(figures)
            if args.ladder:
                print(stream_verdict.ladder_row(figures), flush=True)
                if stream_verdict.broken(figures):
                    break
        for service in services:
            await stream_services.stop(service)
        rate = steps[-1].offered["order"]
        bare = await bare_inserts(url, spec.customers, rate, args.baseline_seconds)
        await asyncio.sleep(1.5)
        stop.set()
        await sampling
        baseline = baseline_figures(bare, probe.samples)
        if args.samples:
            write_samples(Path(args.samples), probe.samples)  # after the measurement
        report(args, steps, baseline, debounce, events, names, services)
        print(f"{before} -> {load_average()}")
        print(
            json.dumps(
                {
                    "bench": "steady_stream",
                    "customers": spec.customers,
                    "orders": spec.orders,
                    "settled_seconds": settled,
                    "steps": [figures.json() for figures in steps],
                    "baseline": baseline,
                    "idle": idle,
                    "metrics_updated_per_segment": {
                        names.get(uuid.UUID(k), k): n for k, n in events.per_segment.items()
                    },
                    "probe_failures": probe.failures,
                    "load_generator": [
                        {"dispatch_late_ms": r["dispatch_late_ms"]} for r in results
                    ],
                },
                default=str,
            )
        )
    finally:
        stop.set()
        if sampling is not None and not sampling.done():
            sampling.cancel()
        for service in services:
            await stream_services.stop(service)
        if probe is not None:
            with contextlib.suppress(Exception):
                await probe.close()
        await amqp.close()
        await remove_topology(prefix)
        if not args.keep:
            await drop(DATABASE)


def report(
    args: argparse.Namespace,
    steps: list[stream_report.Figures],
    baseline: dict[str, Any],
    debounce: float,
    events: Events,
    names: dict[uuid.UUID, str],
    services: list[stream_services.Service],
) -> None:
    shown = steps[-1]
    stream_report.print_figures(shown, debounce)
    ratio = shown.ms_per_order / baseline["ms_per_row"] if baseline["ms_per_row"] else math.nan
    print(
        f"baseline, bare single-row INSERT of new orders (same table and indexes), "
        f"{baseline['inserted']:,} rows at {baseline['rate']:.0f}/s: "
        f"{baseline['ms_per_row']:.3f} ms of database CPU per row; "
        f"per order write / per bare row = {ratio:.1f}"
    )
    counts = {names.get(uuid.UUID(k), k): n for k, n in sorted(events.per_segment.items())}
    print(f"metrics.updated received per segment over the whole run: {counts}")
    if args.ladder:
        held = [f for f in steps if not stream_verdict.broken(f)]
        last = steps[-1]
        if stream_verdict.broken(last):
            low = f"{held[-1].offered['order']:.0f}" if held else "below the first step"
            print(f"\nbreaking point: between {low} and {last.offered['order']:.0f} orders/s")
        else:
            print(f"\nno break up to {last.offered['order']:.0f} orders/s")
        for figures in steps:
            hot = stream_verdict.saturated(figures) + stream_verdict.growing(figures)
            if hot:
                print(f"first saturated at {figures.offered['order']:.0f} orders/s: {hot}")
                break
    else:
        print("\ntargets:")
        for text, met in stream_verdict.targets(shown, debounce):
            print(f"  {'met ' if met else 'MISSED'}  {text}")
    for service in services:
        problems = service.problems()
        if problems:
            print(f"{service.name} logged: {dict(problems.most_common(8))}")


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=DatasetSpec.customers)
    parser.add_argument("--orders", type=int, default=DatasetSpec.orders)
    parser.add_argument("--orders-rate", type=float, default=100.0, help="order writes/s")
    parser.add_argument("--customers-rate", type=float, default=50.0, help="customer writes/s")
    parser.add_argument("--members-every", type=float, default=2.0, help="s between changes")
    parser.add_argument("--members-batch", type=int, default=10, help="customers per change")
    parser.add_argument("--manual-members", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=180.0, help="measured duration")
    parser.add_argument("--warm-up", type=float, default=5.0, help="load before measuring")
    parser.add_argument("--ladder", action="store_true", help="rising order rates")
    parser.add_argument("--rates", default="25,50,100,200,300,500,700,1000")
    parser.add_argument("--step-seconds", type=float, default=60.0)
    parser.add_argument("--baseline-seconds", type=float, default=30.0)
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="measured before")
    parser.add_argument("--settle-timeout", type=float, default=1800.0)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--samples", help="write every sample to this file (JSON lines)")
    return parser


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main(arguments().parse_args()))

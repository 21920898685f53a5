"""The open-loop load of bench.steady_stream, as a process of its own: order writes, customer
writes and a change of a manual segment's membership every few seconds, each sent when due
on a fixed schedule and timed from then (a server that falls behind shows its queue instead
of slowing the schedule).

    python -m bench.stream_load --url http://127.0.0.1:8000 --key <api key> \\
        --customers 1000000 --orders 5000000 --orders-rate 100 --customers-rate 50 \\
        --seconds 180 --segment <manual segment id> --segment-every 100

- orders, `PUT /v1/orders/<id>`: 85% new orders (`s<tag>-<i>`) of existing customers, 10% a
  new total for an order of the data set, 5% the cancellation of one;
- customers, `PUT /v1/customers/<id>`: 30% new ones (subscribed), 50% a new name and
  attributes, 20% a new email status (subscribed or unsubscribed, with the email);
- every `--members-every` seconds `POST /v1/segments/<id>/members` with `--members-batch`
  customers outside the segment (ids 1 more than a multiple of `--segment-every`), then
  `/members/remove` of the same ones, alternately, each with an `X-Correlation-ID` of its
  own (`stream-<tag>-<index>`).

Prints one JSON line: per kind of request the latencies (ms, from the due time) of those due
after `--warm-up`, their statuses and rates, and each membership change with its times.
"""

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from bench.loadgen import read_response, request_bytes

KINDS = ("order", "customer", "members")
TIMEOUT = 30.0
FIRST_NAMES = ("Ada", "Alan", "Grace", "Linus", "Barbara", "Ken")


@dataclass(frozen=True)
class Plan:
    customers: int
    orders: int
    orders_rate: float
    customers_rate: float
    seconds: float
    warm_up: float
    segment: str
    segment_every: int
    members_every: float = 2.0
    members_batch: int = 10
    first_change: int = 0
    tag: str = "0"
    seed: int = 1


def schedule(plan: Plan) -> list[tuple[float, str, int]]:
    """(seconds from the start, kind, index) of every request, in due order."""
    total = plan.warm_up + plan.seconds
    items: list[tuple[float, str, int]] = []
    if plan.orders_rate > 0:
        items += [(i / plan.orders_rate, "order", i) for i in range(int(plan.orders_rate * total))]
    if plan.customers_rate > 0:
        count = int(plan.customers_rate * total)
        items += [((j + 0.5) / plan.customers_rate, "customer", j) for j in range(count)]
    if plan.members_every > 0:
        count = int(total / plan.members_every)
        items += [
            ((k + 0.5) * plan.members_every, "members", plan.first_change + k) for k in range(count)
        ]
    return sorted(items)


def change_ids(plan: Plan, index: int) -> list[str]:
    """The customers change `index` adds (even) or removes (odd): outside the segment."""
    outsiders = (plan.customers - 1) // plan.segment_every + 1
    start = (index // 2) * plan.members_batch % max(1, outsiders - plan.members_batch)
    return [f"c{1 + plan.segment_every * m:07d}" for m in range(start, start + plan.members_batch)]


def _money(rng: random.Random) -> str:
    cents = int(rng.lognormvariate(8.5, 0.8))  # about 50.00
    return f"{cents // 100}.{cents % 100:02d}"


@dataclass
class Request:
    kind: str
    index: int
    method: str
    path: str
    body: dict[str, Any]
    headers: list[tuple[str, str]] = field(default_factory=list)


def build(plan: Plan, kind: str, index: int, rng: random.Random) -> Request:
    if kind == "order":
        roll = rng.random()
        if roll < 0.85:
            body: dict[str, Any] = {
                "customer_external_id": f"c{rng.randint(1, plan.customers):07d}",
                "total": _money(rng),
                "placed_at": datetime.now(UTC).isoformat(),
                "status": "placed",
            }
            return Request(kind, index, "PUT", f"/v1/orders/s{plan.tag}-{index}", body)
        existing = f"/v1/orders/o{rng.randint(1, plan.orders):08d}"
        if roll < 0.95:
            return Request(kind, index, "PUT", existing, {"total": _money(rng)})
        return Request(kind, index, "PUT", existing, {"status": "cancelled"})
    if kind == "customer":
        roll = rng.random()
        if roll < 0.30:
            new = f"s{plan.tag}-{index}"
            body = {
                "email": f"{new}@example.com",
                "first_name": rng.choice(FIRST_NAMES),
                "email_status": "subscribed",
                "attributes": {"tier": "bronze", "source": "stream"},
            }
            return Request(kind, index, "PUT", f"/v1/customers/{new}", body)
        customer = rng.randint(1, plan.customers)
        path = f"/v1/customers/c{customer:07d}"
        if roll < 0.80:
            body = {
                "first_name": rng.choice(FIRST_NAMES),
                "attributes": {"tier": "silver", "loyalty_points": rng.randint(0, 20_000)},
            }
            return Request(kind, index, "PUT", path, body)
        body = {
            "email": f"customer{customer}@example.com",
            "email_status": rng.choice(("subscribed", "unsubscribed")),
        }
        return Request(kind, index, "PUT", path, body)
    adds = index % 2 == 0
    path = f"/v1/segments/{plan.segment}/members" + ("" if adds else "/remove")
    headers = [("X-Correlation-ID", f"stream-{plan.tag}-{index}")]
    return Request(kind, index, "POST", path, {"external_ids": change_ids(plan, index)}, headers)


async def run(url: str, key: str, plan: Plan, connections: int) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    items = schedule(plan)
    due: asyncio.Queue[tuple[float, Request] | None] = asyncio.Queue()
    latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
    statuses: dict[str, Counter[int]] = {kind: Counter() for kind in KINDS}
    last_done: dict[str, float] = {}
    changes: list[dict[str, Any]] = []
    started = time.perf_counter()
    wall = time.time() - started  # wall clock = wall + perf_counter()
    measured_from = started + plan.warm_up

    async def send(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, r: Request) -> int:
        body = json.dumps(r.body).encode()
        target = f"{host}:{port}"
        writer.write(request_bytes(target, key, r.path, body, method=r.method, headers=r.headers))
        return await asyncio.wait_for(read_response(reader), TIMEOUT)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (item := await due.get()) is not None:
                scheduled, request = item
                sent = time.perf_counter()
                try:
                    status = await send(writer, reader, request)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                    status = 0  # counted as failed; a fresh connection for the next one
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                done = time.perf_counter()
                if request.kind == "members":
                    changes.append(
                        {
                            "index": request.index,
                            "adds": request.index % 2 == 0,
                            "correlation_id": request.headers[0][1],
                            "due": wall + scheduled,
                            "sent": wall + sent,
                            "done": wall + done,
                            "status": status,
                            "measured": scheduled >= measured_from,
                        }
                    )
                if scheduled >= measured_from:
                    latencies[request.kind].append(done - scheduled)
                    statuses[request.kind][status] += 1
                    last_done[request.kind] = done
        finally:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    rng = random.Random(f"{plan.seed}-{plan.tag}")
    late = 0.0
    for offset, kind, index in items:
        scheduled = started + offset
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        late = max(late, time.perf_counter() - scheduled)
        due.put_nowait((scheduled, build(plan, kind, index, rng)))
    for _ in workers:
        due.put_nowait(None)
    await asyncio.gather(*workers)
    kinds = {}
    for kind in KINDS:
        offered = sum(1 for offset, k, _ in items if k == kind and offset >= plan.warm_up)
        ok = sum(count for status, count in statuses[kind].items() if 200 <= status < 300)
        span = last_done.get(kind, measured_from) - measured_from
        kinds[kind] = {
            "offered": offered,
            "offered_rate": offered / plan.seconds,
            "ok": ok,
            "rate": ok / span if span > 0 else 0.0,
            "statuses": {str(status): n for status, n in statuses[kind].items()},
            "latencies_ms": [round(value * 1000, 3) for value in latencies[kind]],
        }
    return {
        "started": wall + started,
        "measured_from": wall + measured_from,
        "seconds": plan.seconds,
        "dispatch_late_ms": round(late * 1000, 3),
        "kinds": kinds,
        "changes": changes,
    }


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--customers", type=int, required=True, help="customers c0000001...")
    parser.add_argument("--orders", type=int, required=True, help="orders o00000001...")
    parser.add_argument("--orders-rate", type=float, default=100.0)
    parser.add_argument("--customers-rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--warm-up", type=float, default=0.0, help="sent, not measured")
    parser.add_argument("--segment", required=True, help="the manual segment's id")
    parser.add_argument("--segment-every", type=int, required=True, help="its members' id step")
    parser.add_argument("--members-every", type=float, default=2.0, help="seconds; 0: none")
    parser.add_argument("--members-batch", type=int, default=10)
    parser.add_argument("--first-change", type=int, default=0)
    parser.add_argument("--tag", default="0", help="makes new ids unique per run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--connections", type=int, default=32)
    return parser


def main() -> None:
    args = arguments().parse_args()
    plan = Plan(
        customers=args.customers,
        orders=args.orders,
        orders_rate=args.orders_rate,
        customers_rate=args.customers_rate,
        seconds=args.seconds,
        warm_up=args.warm_up,
        segment=args.segment,
        segment_every=args.segment_every,
        members_every=args.members_every,
        members_batch=args.members_batch,
        first_change=args.first_change,
        tag=args.tag,
        seed=args.seed,
    )
    print(json.dumps(asyncio.run(run(args.url, args.key, plan, args.connections))))


if __name__ == "__main__":
    main()

"""`make demo`: a sample store on top of `make run`'s set-up, with syncs to the sandbox vendors.

    python -m deploy.demo [--customers 20000] [--orders 100000] [--seed 1]

starts over in its own database and bus prefix (`make run`'s with `_demo` and `-demo`
appended, dropped and created again each time), starts the sandbox Mailchimp audience and the
production and staging commerce stores (the vendor fakes of tests/fakes, as
`python -m tests.fakes` processes: the demo runs from a checkout), starts the three services
through deploy/run-local.sh, loads the store through the API's bulk endpoints, creates
destinations and rule segments, subscribes each to a destination (on change, or daily for the
store), runs a first sync of each, shows a subscription carrying a change by itself, and says
where to look. Ctrl-C (or SIGTERM) stops everything it started.

    python -m deploy.demo --load-only --api URL --key KEY --mailchimp URL --commerce URL \
        [--commerce-staging URL] [--customers N] [--orders N]

only loads, into services and fakes already running (a test's, or your own `make run`).

The services never import this module.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOG_DIR = ROOT / ".demo"
# The API's largest batch (docs/contract.md: batch endpoints take at most 10,000 items).
BATCH = 10_000
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@localhost:5432/segments"
DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/"
# Where docs/sync.md ("Trying it locally with the fakes") starts the fakes.
MAILCHIMP_PORT = 9101
COMMERCE_PORT = 9104
COMMERCE_STAGING_PORT = 9105
# The credentials the fakes accept by default (tests/fakes/README.md).
MAILCHIMP_KEY = "fake-mailchimp-key-us1"
MAILCHIMP_LIST = "list1"
COMMERCE_TOKEN = "fake-commerce-token"
DEV_KEY = "sk_dev_admin_key"


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# --- The sample store ----------------------------------------------------------------------


class Weighted:
    """Picks one of a few names by weight: `random.choices` builds its tables on every call,
    which costs more than all the rest of the store's generation."""

    def __init__(self, choices: tuple[tuple[str, int], ...]) -> None:
        self.names = [name for name, _ in choices]
        self.bounds = list(itertools.accumulate(weight for _, weight in choices))

    def pick(self, rng: random.Random) -> str:
        return self.names[bisect.bisect(self.bounds, rng.random() * self.bounds[-1])]


FIRST_NAMES = (
    "Ada Alan Amara Ana Ben Carla Chen Chloe Dan Diego Elif Emma Eva Farah Felix Grace Hana "
    "Hugo Ines Isaac Ivy Jamal Jonas Julia Kai Lara Leo Lina Luca Maya Mia Nadia Noah Olga "
    "Omar Paula Priya Rafael Rosa Sam Sofia Tariq Theo Uma Victor Yara Yusuf Zoe"
).split()
LAST_NAMES = (
    "Abbott Adeyemi Bauer Becker Brown Castro Chen Costa Dubois Evans Fischer Garcia Gupta "
    "Hansen Ito Jansen Kim Kowalski Larsen Lee Lopez Martin Meyer Moreau Murphy Nakamura "
    "Nguyen Novak Okafor Olsen Patel Petrov Quinn Rossi Santos Schmidt Silva Smith Tanaka "
    "Torres Walker Weber Wilson Yilmaz Young Zhang"
).split()
DOMAINS = ("example.com", "example.net", "example.org")
# Country, weight, cities.
COUNTRIES = (
    ("US", 40, ("New York", "Austin", "Chicago", "Seattle", "Denver")),
    ("GB", 12, ("London", "Manchester", "Leeds")),
    ("DE", 11, ("Berlin", "Hamburg", "Munich")),
    ("FR", 9, ("Paris", "Lyon", "Lille")),
    ("CA", 8, ("Toronto", "Montreal", "Vancouver")),
    ("NL", 5, ("Amsterdam", "Utrecht")),
    ("ES", 5, ("Madrid", "Valencia")),
    ("IT", 5, ("Milan", "Turin")),
    ("AU", 5, ("Sydney", "Melbourne")),
)
# Consent: most customers subscribed, some unsubscribed, cleaned (bounced) or pending, a few
# without an email at all (store pick-ups).
EMAIL_STATUSES = Weighted(
    (("subscribed", 70), ("unsubscribed", 14), ("cleaned", 5), ("pending", 8))
)
NO_EMAIL_SHARE = 0.03
SIGNUP_CHANNELS = Weighted((("web", 60), ("mobile_app", 25), ("in_store", 15)))
ORDER_STATUSES = Weighted((("placed", 93), ("cancelled", 4), ("refunded", 3)))
# Registered customers who never ordered.
NON_BUYER_SHARE = 0.2
# Loyalty tiers by lifetime placed spend, in cents.
TIERS = ((250_000, "platinum"), (100_000, "gold"), (30_000, "silver"))
HISTORY_DAYS = 730


@dataclass(frozen=True)
class SampleStore:
    customers: list[dict[str, Any]]
    # (external_id, customer_external_id, total, placed_at, status), oldest first.
    orders: list[tuple[str, str, str, str, str]]

    def customer_batches(self) -> Iterator[list[dict[str, Any]]]:
        for start in range(0, len(self.customers), BATCH):
            yield self.customers[start : start + BATCH]

    def modest_subscriber(self) -> str:
        """A subscribed customer of the lowest loyalty tier: in no segment of big spenders."""
        return next(
            str(row["external_id"])
            for row in self.customers
            if row.get("email_status") == "subscribed"
            and row["attributes"]["loyalty_tier"] == "bronze"
        )

    def order_batches(self) -> Iterator[list[dict[str, Any]]]:
        for start in range(0, len(self.orders), BATCH):
            yield [
                {
                    "external_id": external_id,
                    "customer_external_id": customer,
                    "total": total,
                    "placed_at": placed_at,
                    "status": status,
                }
                for external_id, customer, total, placed_at, status in self.orders[
                    start : start + BATCH
                ]
            ]


def sample_store(customers: int, orders: int, seed: int, now: datetime) -> SampleStore:
    """A store whose figures spread as a real one's do, the same for the same seed and `now`.

    About one customer in five never ordered. Buyers order once, and then again in proportion
    to a log-normal propensity (a few order dozens of times). Order values are log-normal
    around each customer's own typical basket. Each customer's last order is exponentially
    distributed back from `now` (mean 110 days: most bought recently, some lapsed), the earlier
    ones spread over a tenure of up to about 20 months.
    """
    rng = random.Random(seed)
    buyers: list[int] = []
    propensity: list[float] = []
    for index in range(customers):
        if rng.random() >= NON_BUYER_SHARE:
            buyers.append(index)
            propensity.append(rng.lognormvariate(0.0, 1.6))
    buyers = buyers[:orders]
    counts = Counter(buyers)
    if orders > len(buyers):
        counts.update(rng.choices(buyers, propensity[: len(buyers)], k=orders - len(buyers)))

    placed: list[tuple[datetime, str, str, str]] = []
    spend: dict[int, int] = {}  # cents
    for index in buyers:
        basket = rng.lognormvariate(math.log(55.0), 0.55)
        last = min(rng.expovariate(1 / 110), HISTORY_DAYS - 30)
        tenure = min(rng.uniform(20.0, 600.0), HISTORY_DAYS - last)
        for number in range(counts[index]):
            days_ago = last + (0.0 if number == 0 else rng.random() * tenure)
            cents = max(99, round(basket * rng.lognormvariate(0.0, 0.35) * 100))
            status = "placed" if number == 0 else ORDER_STATUSES.pick(rng)
            if status == "placed":
                spend[index] = spend.get(index, 0) + cents
            at = now - timedelta(seconds=round(days_ago * 86_400))
            total = f"{cents // 100}.{cents % 100:02d}"
            placed.append((at, f"c-{index + 1:05d}", total, status))
    placed.sort()
    order_rows = [
        (f"o-{number:06d}", customer, total, at.isoformat().replace("+00:00", "Z"), status)
        for number, (at, customer, total, status) in enumerate(placed, start=1)
    ]

    countries = Weighted(tuple((name, weight) for name, weight, _ in COUNTRIES))
    cities = {name: names for name, _, names in COUNTRIES}
    customer_rows: list[dict[str, Any]] = []
    for index in range(customers):
        first, last_name = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        country = countries.pick(rng)
        lifetime = spend.get(index, 0)
        tier = next((name for floor, name in TIERS if lifetime >= floor), "bronze")
        row: dict[str, Any] = {
            "external_id": f"c-{index + 1:05d}",
            "first_name": first,
            "last_name": last_name,
            "attributes": {
                "loyalty_tier": tier,
                "signup_channel": SIGNUP_CHANNELS.pick(rng),
                "accepts_sms": rng.random() < 0.35,
            },
            "shipping_address": {"city": rng.choice(cities[country]), "country": country},
        }
        if rng.random() >= NO_EMAIL_SHARE:
            domain = DOMAINS[index % len(DOMAINS)]
            row["email"] = f"{first}.{last_name}.{index + 1}@{domain}".lower()
            row["email_status"] = EMAIL_STATUSES.pick(rng)
        customer_rows.append(row)
    return SampleStore(customer_rows, order_rows)


# --- What the demo creates -----------------------------------------------------------------


@dataclass(frozen=True)
class DemoSegment:
    name: str
    description: str
    rule: dict[str, Any]
    destination: str  # a key of Sandbox.destinations()
    schedule: dict[str, Any]  # its subscription's (SPEC 6.1)

    @property
    def schedule_text(self) -> str:
        return SCHEDULES[self.schedule.get("cron", self.schedule["mode"])]


# ESPs follow their segments within seconds; the store takes a daily export, as stores do.
ON_CHANGE = {"mode": "on_change", "debounce_seconds": 2}
DAILY = {"mode": "cron", "cron": "0 6 * * *"}
SCHEDULES = {"on_change": "on change", DAILY["cron"]: "daily at 06:00 UTC"}

DEMO_SEGMENTS = (
    DemoSegment(
        "High spenders",
        "Lifetime revenue of 1,500 or more.",
        {"field": "total_revenue", "op": "gte", "value": 1500},
        "mailchimp",
        ON_CHANGE,
    ),
    DemoSegment(
        "Recent repeat buyers",
        "Two or more orders, the last within 60 days: the newsletter's core.",
        {
            "all": [
                {"field": "orders_count", "op": "gte", "value": 2},
                {"field": "last_order_at", "op": "within_last_days", "value": 60},
            ]
        },
        "mailchimp",
        ON_CHANGE,
    ),
    DemoSegment(
        "Win-back: lapsed subscribers",
        "Subscribed, with no order for more than 180 days.",
        {
            "all": [
                {"field": "email_status", "op": "eq", "value": "subscribed"},
                {"field": "days_since_last_order", "op": "gt", "value": 180},
            ]
        },
        "mailchimp",
        ON_CHANGE,
    ),
    DemoSegment(
        "Platinum members",
        "Loyalty tier platinum: a member group of the commerce store.",
        {"field": "attributes.loyalty_tier", "op": "eq", "value": "platinum"},
        "commerce",
        DAILY,
    ),
)


@dataclass(frozen=True)
class Sandbox:
    """Where the sandbox vendors listen (each URL without its API root)."""

    mailchimp: str
    commerce: str
    commerce_staging: str | None = None

    def destinations(self) -> dict[str, dict[str, Any]]:
        store = {"store_id": "1", "token": COMMERCE_TOKEN}
        found: dict[str, dict[str, Any]] = {
            "mailchimp": {
                "name": "Sandbox Mailchimp",
                "type": "mailchimp",
                "config": {
                    "api_key": MAILCHIMP_KEY,
                    "list_id": MAILCHIMP_LIST,
                    "base_url": f"{self.mailchimp}/3.0",
                },
            },
            "commerce": {
                "name": "Sandbox store (production)",
                "type": "commerce",
                "config": {
                    **store,
                    "environment": "production",
                    "base_url": f"{self.commerce}/rest/admin/v2",
                },
            },
        }
        if self.commerce_staging:
            found["commerce_staging"] = {
                "name": "Sandbox store (staging)",
                "type": "commerce",
                "config": {
                    **store,
                    "environment": "staging",
                    "base_url": f"{self.commerce_staging}/rest/admin/v2",
                },
            }
        return found


@dataclass
class Report:
    segments: dict[str, str] = field(default_factory=dict)  # name -> id
    # (segment id, destination id) -> how its subscription runs
    subscriptions: dict[tuple[str, str], str] = field(default_factory=dict)
    destinations: dict[str, str] = field(default_factory=dict)  # Sandbox key -> id
    destination_names: dict[str, str] = field(default_factory=dict)  # id -> name
    runs: list[dict[str, Any]] = field(default_factory=list)


# --- Loading through the API ---------------------------------------------------------------

FINISHED = ("succeeded", "partial", "failed")


async def _call(
    api: httpx.AsyncClient,
    method: str,
    path: str,
    json: Any = None,
    expect: int | tuple[int, ...] = 200,
    params: dict[str, str] | None = None,
) -> Any:
    """One API call, retried while the API answers 503 (a database or broker hiccup)."""
    for attempt in range(5):
        response = await api.request(method, path, json=json, params=params)
        if response.status_code == 503 and attempt < 4:
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            continue
        if response.status_code not in (expect if isinstance(expect, tuple) else (expect,)):
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None
    raise AssertionError("unreachable")


async def _poll(
    api: httpx.AsyncClient, path: str, done: Callable[[Any], bool], within: float, what: str
) -> Any:
    """GET the path until `done` holds for its answer."""
    deadline = time.monotonic() + within
    while True:
        value = await _call(api, "GET", path)
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not done within {within:.0f} s: {value}")
        await asyncio.sleep(0.25)


async def _find_segment(api: httpx.AsyncClient, name: str) -> str | None:
    found = await _call(api, "GET", "/v1/segments", params={"q": name, "limit": "1000"})
    for item in found["items"]:
        if item["name"].lower() == name.lower():
            return str(item["id"])
    return None


async def _ensure_destination(
    api: httpx.AsyncClient, existing: dict[str, str], body: dict[str, Any]
) -> str:
    """The destination of that name, its config set to this sandbox's."""
    if body["name"] in existing:
        destination_id = existing[body["name"]]
        await _call(api, "PATCH", f"/v1/destinations/{destination_id}", {"config": body["config"]})
        return destination_id
    created = await _call(api, "POST", "/v1/destinations", body, expect=201)
    return str(created["id"])


async def _sync(
    api: httpx.AsyncClient, segment_id: str, body: dict[str, Any], promotion: bool = False
) -> dict[str, Any]:
    path = f"/v1/segments/{segment_id}/{'promotions' if promotion else 'syncs'}"
    run = await _call(api, "POST", path, body, expect=202)
    finished: dict[str, Any] = await _poll(
        api,
        f"/v1/syncs/{run['id']}",
        lambda r: r["status"] in FINISHED,
        within=120,
        what=f"sync run {run['id']}",
    )
    return finished


async def load(
    api: httpx.AsyncClient, store: SampleStore, sandbox: Sandbox, log: Callable[[str], None]
) -> Report:
    """Loads the store, creates the destinations and segments, syncs each segment once."""
    report = Report()
    started = time.monotonic()

    def step(what: str) -> None:
        log(f"  {time.monotonic() - started:5.1f} s  {what}")

    for batch in store.customer_batches():
        result = await _call(api, "POST", "/v1/customers/bulk", {"customers": batch})
        step(f"customers: {result['created']:,} created, {result['updated']:,} updated")
    # Two calls at a time: one is encoded and sent while the API writes the other.
    batches = list(store.order_batches())
    for start in range(0, len(batches), 2):
        results = await asyncio.gather(
            *(
                _call(api, "POST", "/v1/orders/bulk", {"orders": batch})
                for batch in batches[start : start + 2]
            )
        )
        done = sum(len(batch) for batch in batches[: start + 2])
        created = sum(result["created"] for result in results)
        step(f"orders: {done:,} of {len(store.orders):,} ({created:,} new in these calls)")

    # The default segments follow data changes after a debounce (a minute by default): the
    # demo asks for their refresh now.
    defaults = await _call(api, "GET", "/v1/segments?kind=default&limit=1000")
    for item in sorted(defaults["items"], key=lambda item: str(item["name"])):
        report.segments[item["name"]] = item["id"]
        if item["definition"]["type"] == "rule" and item["active"]:
            await _call(api, "POST", f"/v1/segments/{item['id']}/refresh", expect=202)

    listed = await _call(api, "GET", "/v1/destinations?limit=1000")
    existing = {item["name"]: str(item["id"]) for item in listed["items"]}
    for key, body in sandbox.destinations().items():
        destination_id = await _ensure_destination(api, existing, body)
        report.destinations[key] = destination_id
        report.destination_names[destination_id] = body["name"]
    for segment in DEMO_SEGMENTS:
        segment_id = await _find_segment(api, segment.name)
        if segment_id is None:
            body = {
                "name": segment.name,
                "description": segment.description,
                "definition": {"type": "rule", "rule": segment.rule},
            }
            created = await _call(api, "POST", "/v1/segments", body, expect=201)
            segment_id = str(created["id"])
        else:
            await _call(api, "POST", f"/v1/segments/{segment_id}/refresh", expect=202)
        report.segments[segment.name] = segment_id
    step(f"{len(report.destinations)} destinations, {len(DEMO_SEGMENTS)} rule segments created")

    for name, segment_id in report.segments.items():
        await _poll(
            api,
            f"/v1/segments/{segment_id}",
            lambda segment: segment["status"] != "building",
            within=120,
            what=f"segment {name!r}",
        )
    step("every rule segment computed")

    for segment in DEMO_SEGMENTS:
        pair = (report.segments[segment.name], report.destinations[segment.destination])
        await _call(
            api,
            "POST",
            f"/v1/segments/{pair[0]}/subscriptions",
            {"destination_id": pair[1], "schedule": segment.schedule},
            expect=(201, 409),  # 409: subscribed already (loaded before)
        )
        report.subscriptions[pair] = segment.schedule_text
    kinds = Counter(segment.schedule_text for segment in DEMO_SEGMENTS)
    step("subscriptions: " + ", ".join(f"{count} {kind}" for kind, count in kinds.items()))

    runs = await asyncio.gather(
        *(
            _sync(
                api,
                report.segments[segment.name],
                {"destination_id": report.destinations[segment.destination]},
            )
            for segment in DEMO_SEGMENTS
        )
    )
    report.runs.extend(runs)
    step(f"{len(runs)} syncs: {', '.join(run['status'] for run in runs)}")
    if "commerce_staging" in report.destinations:
        commerce_segment = next(s for s in DEMO_SEGMENTS if s.destination == "commerce")
        promotion = await _sync(
            api,
            report.segments[commerce_segment.name],
            {
                "from_destination_id": report.destinations["commerce"],
                "to_destination_id": report.destinations["commerce_staging"],
            },
            promotion=True,
        )
        report.runs.append(promotion)
        step(f"promotion to the staging store: {promotion['status']}")

    # A subscription at work: a customer added by hand to a segment reaches its ESP by
    # itself, a few seconds later (trigger `change`).
    segment = DEMO_SEGMENTS[0]  # big spenders: the modest subscriber is not one of them
    segment_id, customer = report.segments[segment.name], store.modest_subscriber()
    edit = await _call(
        api, "POST", f"/v1/segments/{segment_id}/members", {"external_ids": [customer]}
    )
    if edit["added"]:
        changed = time.monotonic()
        runs_page = await _poll(
            api,
            f"/v1/syncs?segment_id={segment_id}&trigger=change",
            lambda page: any(run["status"] in FINISHED for run in page["items"]),
            within=120,
            what=f"the subscription of {segment.name!r}",
        )
        run = next(run for run in runs_page["items"] if run["status"] in FINISHED)
        report.runs.append(run)
        step(
            f"{customer} added to {segment.name!r} by hand: its subscription sent it "
            f"{time.monotonic() - changed:.1f} s later ({run['status']})"
        )

    for name, segment_id in report.segments.items():
        await _poll(
            api,
            f"/v1/segments/{segment_id}/metrics",
            lambda metrics: not metrics["stale"] and metrics["computed_at"] is not None,
            within=60,
            what=f"the KPIs of {name!r}",
        )
    step("KPIs of every segment computed")
    return report


async def summary(api: httpx.AsyncClient, report: Report) -> list[str]:
    """The segments with their KPIs and where they went, as lines of a table."""
    lines = [
        f"  {'segment':<30} {'members':>8} {'reachable':>9} {'revenue':>14} {'AOV':>8}  synced",
    ]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in report.runs:
        runs.setdefault((str(run["segment_id"]), str(run["destination_id"])), []).append(run)
    for name, segment_id in report.segments.items():
        metrics = await _call(api, "GET", f"/v1/segments/{segment_id}/metrics")
        synced = []
        for (segment, destination), pair_runs in runs.items():
            if segment != segment_id:
                continue
            how = report.subscriptions.get((segment, destination))
            sent = " then ".join(
                f"{run['stats']['added']:,} added"
                + ("" if run["trigger"] == "manual" else f" ({run['trigger']})")
                for run in pair_runs
            )
            synced.append(
                f"{report.destination_names.get(destination, '?')}"
                f"{f', {how}' if how else ''}: {pair_runs[-1]['status']}, {sent}"
            )
        lines.append(
            f"  {name:<30} {metrics['customers']:>8,} {metrics['reachable_customers']:>9,} "
            f"{Decimal(metrics['total_revenue']):>14,.2f} "
            f"{Decimal(metrics['average_order_value'] or 0):>8,.2f}  {'; '.join(synced)}"
        )
    return lines


def build_store(args: argparse.Namespace) -> SampleStore:
    """The sample store of the arguments, its dates counted back from today's midnight (UTC)."""
    now = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return sample_store(args.customers, args.orders, args.seed, now)


async def load_and_report(args: argparse.Namespace, sandbox: Sandbox, store: SampleStore) -> Report:
    started = time.monotonic()
    say(f"Loading {len(store.customers):,} customers and {len(store.orders):,} orders ...")
    async with httpx.AsyncClient(
        base_url=args.api, headers={"Authorization": f"Bearer {args.key}"}, timeout=120
    ) as api:
        report = await load(api, store, sandbox, say)
        lines = await summary(api, report)
    say()
    say(f"The demo store is ready ({time.monotonic() - started:.0f} s):")
    for line in lines:
        say(line)
    return report


def where_to_look(
    args: argparse.Namespace, sandbox: Sandbox, report: Report, worker_ports: list[int]
) -> list[str]:
    auth = f"-H 'Authorization: Bearer {args.key}'"
    example = report.segments[DEMO_SEGMENTS[0].name]
    lines = [
        "",
        "Where to look:",
        f"  API documentation:     {args.api}/docs (Authorize with {args.key})",
        f"  segments and KPIs:     curl -s '{args.api}/v1/segments?limit=20' {auth}",
        f"  a segment's members:   curl -s '{args.api}/v1/segments/{example}/members' {auth}",
        f"  its subscription:      curl -s '{args.api}/v1/segments/{example}/subscriptions' {auth}",
        f"  every sync run:        curl -s '{args.api}/v1/syncs' {auth}",
        f"  a customer (RFM):      curl -s '{args.api}/v1/customers/c-00042' {auth}",
        f"  sandbox Mailchimp:     curl -s '{sandbox.mailchimp}/_fake/state'",
        f"  sandbox store:         curl -s '{sandbox.commerce}/_fake/state'",
    ]
    if sandbox.commerce_staging:
        lines.append(f"  its staging store:     curl -s '{sandbox.commerce_staging}/_fake/state'")
    metrics = ", ".join(f"http://127.0.0.1:{port}/metrics" for port in worker_ports)
    lines += [
        f"  Prometheus metrics:    {args.api}/metrics, {metrics}",
        "  more:                  README.md, 'From a customer to a synced segment' and 'A demo"
        " store'",
    ]
    return lines


# --- Running the whole demo ----------------------------------------------------------------


def _demo_environment() -> dict[str, str]:
    """`make run`'s environment, moved to the demo's own database and bus prefix."""
    from sqlalchemy.engine import make_url

    env = dict(os.environ)
    for variable in ("SEGMENTS_DATABASE_URL", "SEGMENTS_DATABASE_DIRECT_URL"):
        if variable == "SEGMENTS_DATABASE_URL" or env.get(variable):
            url = make_url(env.get(variable) or DEFAULT_DATABASE_URL)
            env[variable] = url.set(database=f"{url.database}_demo").render_as_string(
                hide_password=False
            )
    env["SEGMENTS_BUS_PREFIX"] = env.get("SEGMENTS_BUS_PREFIX", "segments") + "-demo"
    env.setdefault("SEGMENTS_BOOTSTRAP_API_KEY", DEV_KEY)
    # The fakes listen on 127.0.0.1 (deploy/run-local.sh allows it unless set otherwise).
    allowed = env.get("SEGMENTS_ALLOW_PRIVATE_DESTINATIONS") or "127.0.0.1"
    if "127.0.0.1" not in allowed.split(","):
        allowed += ",127.0.0.1"
    env["SEGMENTS_ALLOW_PRIVATE_DESTINATIONS"] = allowed
    return env


async def _start_over(env: dict[str, str]) -> None:
    """Drops the demo database and deletes the demo prefix's exchanges and queues."""
    import asyncpg
    from sqlalchemy.engine import make_url

    from segments_shared.bus.connection import broker_addresses, connect_first
    from segments_shared.bus.topology import Topology, delete_all
    from segments_shared.db.engine import asyncpg_dsn

    url = make_url(env.get("SEGMENTS_DATABASE_DIRECT_URL") or env["SEGMENTS_DATABASE_URL"])
    if not (url.database or "").endswith("_demo"):  # never anyone else's database
        raise RuntimeError(f"refusing to drop {url.database!r}: not a demo database")
    conn = await asyncpg.connect(asyncpg_dsn(url.set(database="postgres")))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
    finally:
        await conn.close()
    amqp_url = env.get("SEGMENTS_AMQP_URL") or DEFAULT_AMQP_URL
    broker, _ = await connect_first(broker_addresses(amqp_url), "segments-demo")
    try:
        await delete_all(await broker.channel(), Topology(env["SEGMENTS_BUS_PREFIX"]))
    finally:
        await broker.close()


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def _wait_ready(urls: list[str], children: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 180
    async with httpx.AsyncClient(timeout=5) as client:
        for url in urls:
            while True:
                if any(child.poll() is not None for child in children):
                    raise RuntimeError("a process of the demo exited; see its log in .demo/")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url} not ready within 180 s; see the logs in .demo/")
                await asyncio.sleep(0.25)


class Stopped(Exception):
    """SIGINT or SIGTERM: stop everything the demo started."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped


def run_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    env = _demo_environment()
    ports = {
        "segment-api": int(env.get("SEGMENTS_API_PORT", "8000")),
        "sync-worker": int(env.get("SEGMENTS_SYNC_WORKER_PORT", "8001")),
        "metrics-worker": int(env.get("SEGMENTS_METRICS_WORKER_PORT", "8002")),
        "mailchimp fake": MAILCHIMP_PORT,
        "commerce fake": COMMERCE_PORT,
        "commerce staging fake": COMMERCE_STAGING_PORT,
    }
    taken = [f"{name} ({port})" for name, port in ports.items() if _port_taken(port)]
    if taken:
        say(f"make demo: ports already in use: {', '.join(taken)}. Is `make run` running?")
        return 1
    from segments_shared.cli import preflight

    if preflight.main() != 0:  # PostgreSQL and RabbitMQ answer, or it says how to start them
        return 1
    args.api = f"http://127.0.0.1:{ports['segment-api']}"
    args.key = env["SEGMENTS_BOOTSTRAP_API_KEY"]
    sandbox = Sandbox(
        mailchimp=f"http://127.0.0.1:{MAILCHIMP_PORT}",
        commerce=f"http://127.0.0.1:{COMMERCE_PORT}",
        commerce_staging=f"http://127.0.0.1:{COMMERCE_STAGING_PORT}",
    )
    LOG_DIR.mkdir(exist_ok=True)
    say(f"Starting over in database {env['SEGMENTS_DATABASE_URL'].rsplit('/', 1)[-1]} ...")
    asyncio.run(_start_over(env))

    # Also for SIGINT, which a shell may have set to be ignored (`make demo &`): Ctrl-C and
    # SIGTERM of the process group stop the demo the same way.
    signal.signal(signal.SIGTERM, _raise_stopped)
    signal.signal(signal.SIGINT, _raise_stopped)
    children: list[subprocess.Popen[bytes]] = []

    def start(name: str, command: list[str]) -> None:
        with (LOG_DIR / f"{name}.log").open("wb") as log:
            children.append(
                subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            )

    fake = [str(BIN / "python"), "-m", "tests.fakes"]
    try:
        start("mailchimp", [*fake, "mailchimp", "--port", str(MAILCHIMP_PORT)])
        start("commerce", [*fake, "commerce", "--port", str(COMMERCE_PORT)])
        start("commerce-staging", [*fake, "commerce", "--port", str(COMMERCE_STAGING_PORT)])
        start("services", [str(ROOT / "deploy" / "run-local.sh")])
        say("Starting the three services and the sandbox vendors (logs in .demo/) ...")
        ready = [
            f"{sandbox.mailchimp}/_fake/state",
            f"{sandbox.commerce}/_fake/state",
            f"{sandbox.commerce_staging}/_fake/state",
            *(
                f"http://127.0.0.1:{ports[name]}/readyz"
                for name in ("segment-api", "sync-worker", "metrics-worker")
            ),
        ]
        store = build_store(args)  # while the services start
        asyncio.run(_wait_ready(ready, children))
        say(f"Ready after {time.monotonic() - started:.0f} s.")
        report = asyncio.run(load_and_report(args, sandbox, store))
        say(f"Everything above took {time.monotonic() - started:.0f} s.")
        worker_ports = [ports["sync-worker"], ports["metrics-worker"]]
        for line in where_to_look(args, sandbox, report, worker_ports):
            say(line)
        say("")
        say("The subscriptions keep the sandboxes in step: add or remove members, or change")
        say("customers, and watch GET /v1/syncs. Ctrl-C stops the services and the sandboxes.")
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        say("make demo: a process exited; see .demo/*.log")
        return 1
    except Stopped:
        return 0
    except Exception as error:
        say(f"make demo failed: {error!r}; the logs are in .demo/")
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=40)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--customers", type=int, default=20_000, help="default 20,000")
    parser.add_argument("--orders", type=int, default=100_000, help="default 100,000")
    parser.add_argument("--seed", type=int, default=1, help="the same seed, the same store")
    parser.add_argument("--load-only", action="store_true", help="load into running services")
    parser.add_argument("--api", default="http://127.0.0.1:8000", help="segment-api (--load-only)")
    parser.add_argument("--key", default=DEV_KEY, help="an admin API key (--load-only)")
    parser.add_argument("--mailchimp", help="the Mailchimp fake's URL (--load-only)")
    parser.add_argument("--commerce", help="the commerce fake's URL (--load-only)")
    parser.add_argument("--commerce-staging", help="a staging commerce fake's URL (--load-only)")
    args = parser.parse_args(argv)
    if not args.load_only:
        return run_demo(args)
    if not args.mailchimp or not args.commerce:
        parser.error("--load-only needs --mailchimp and --commerce")
    sandbox = Sandbox(args.mailchimp, args.commerce, args.commerce_staging)
    asyncio.run(load_and_report(args, sandbox, build_store(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

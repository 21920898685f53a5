"""A deterministic store data set for benchmarks, built once into a template database and
cloned for each run.

    python -m bench.dataset [--customers 1000000] [--orders 5000000] [--seed 42] [--rebuild]

builds (or finds) the template and prints its name. From a benchmark:

    spec = DatasetSpec()                       # 1,000,000 customers, 5,000,000 orders
    url = await clone(spec, "segments_bench_mine")   # builds the template on first use
    segment_id = await create_segment(url, "Everyone")          # every customer
    segment_id = await create_segment(url, "Tenth", every=10)   # customers with id % 10 == 0
    ...
    await drop("segments_bench_mine")

The same spec always gives the same rows (one seeded numpy generator; customer and order ids
are 1..N in generation order, so a benchmark can address them directly). The template's name
carries the spec and a fingerprint of the migrations, so a schema change builds a new one.
Building takes a minute or two at the default size; a clone takes seconds (`FILE_COPY`).

What the rows look like:

- customers `c0000001`...: 92% have an email (`customer<id>@example.com`; 1% of them share
  the previous customer's address, as households do); of those, 60% `subscribed`, 20%
  `pending`, 15% `unsubscribed`, 5% `cleaned` (no email: `pending`). First and last names,
  `attributes` {tier, age, vip, source, loyalty_points, birthday}, a shipping address (95%)
  and a billing address (70% the same, 20% another, 10% none), `created_at` before their first
  order.
- orders `o00000001`... in `placed_at` order (as a store records them), spread uniformly over
  `years` before `end`; 15% of customers never ordered, the others with log-normal weights
  (most have a few orders, some many); 90% `placed`, 6% `cancelled`, 4% `refunded`; totals
  log-normal around 50.00 USD.
"""

import argparse
import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import numpy as np
from sqlalchemy.engine import make_url

from bench.common import SERVER_URL
from segments_shared.db.engine import asyncpg_dsn
from segments_shared.db.ids import uuid7
from segments_shared.db.migrate import MIGRATIONS_DIR, upgrade_async

CHUNK = 100_000
FIRST_NAMES = ("Ada", "Alan", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances")
LAST_NAMES = ("Lovelace", "Turing", "Hopper", "Torvalds", "Liskov", "Thompson", "Hamilton")
CITIES = (
    ("Berlin", "BE", "10115", "DE"),
    ("Paris", "IDF", "75001", "FR"),
    ("Austin", "TX", "73301", "US"),
    ("Leeds", "ENG", "LS1 1UR", "GB"),
    ("Osaka", "27", "530-0001", "JP"),
)
TIERS = ("bronze", "silver", "gold", "platinum")
SOURCES = ("web", "store", "app")
STATUSES = ("subscribed", "pending", "unsubscribed", "cleaned")


@dataclass(frozen=True)
class DatasetSpec:
    customers: int = 1_000_000
    orders: int = 5_000_000
    seed: int = 42
    years: float = 3.0
    end: datetime = field(default=datetime(2026, 11, 1, tzinfo=UTC))

    def template_name(self) -> str:
        """Spec and schema in the name: a changed migration never reuses a stale template."""
        digest = hashlib.sha256(repr(self).encode())
        for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
            digest.update(path.read_bytes())
        return f"{self._prefix()}{digest.hexdigest()[:10]}"

    def _prefix(self) -> str:
        return f"segments_tpl_{self.customers}c_{self.orders}o_"


def _dsn(database: str) -> str:
    return asyncpg_dsn(make_url(SERVER_URL).set(database=database))


def database_url(database: str) -> str:
    """The SQLAlchemy URL of a database on the benchmark server."""
    return make_url(SERVER_URL).set(database=database).render_as_string(hide_password=False)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _text(value: str | None) -> str:
    """A value in COPY text format (our generated strings hold no tabs or backslashes)."""
    return "\\N" if value is None else value


def _timestamps(seconds: np.ndarray) -> list[str]:
    base = np.datetime64("1970-01-01T00:00:00", "s")
    return [f"{t}+00" for t in (base + seconds.astype("timedelta64[s]")).astype(str)]


@dataclass
class _Generated:
    customer_created: np.ndarray
    order_customer: np.ndarray
    order_placed: np.ndarray
    order_status: np.ndarray
    order_total_cents: np.ndarray


def _generate(spec: DatasetSpec) -> tuple[np.random.Generator, _Generated]:
    rng = np.random.default_rng(spec.seed)
    end = int(spec.end.timestamp())
    span = int(spec.years * 365.25 * 86400)
    buyer = rng.random(spec.customers) < 0.85
    weight = rng.lognormal(0.0, 1.0, spec.customers) * buyer
    order_customer = rng.choice(spec.customers, size=spec.orders, p=weight / weight.sum()) + 1
    order_placed = end - rng.integers(0, span, spec.orders)
    order_status = rng.choice(3, size=spec.orders, p=[0.90, 0.06, 0.04])
    order_total_cents = np.minimum(
        np.round(rng.lognormal(np.log(50.0), 0.8, spec.orders) * 100), 9_999_999
    ).astype(np.int64)
    # Chronological, as a store records orders: ids follow placed_at.
    by_time = np.argsort(order_placed, kind="stable")
    order_customer, order_placed = order_customer[by_time], order_placed[by_time]
    order_status, order_total_cents = order_status[by_time], order_total_cents[by_time]
    created = end - rng.integers(0, span + 180 * 86400, spec.customers)
    first_order = np.full(spec.customers, end, dtype=np.int64)
    np.minimum.at(first_order, order_customer - 1, order_placed)
    customer_created = np.minimum(created, first_order - 3600)
    return rng, _Generated(
        customer_created, order_customer, order_placed, order_status, order_total_cents
    )


def _address(city: int, number: int, street: str) -> str:
    name, region, postal_code, country = CITIES[city]
    return json.dumps(
        {
            "line1": f"{number} {street}",
            "city": name,
            "region": region,
            "postal_code": postal_code,
            "country": country,
        }
    )


def _customer_rows(spec: DatasetSpec, rng: np.random.Generator, data: _Generated) -> Iterator[str]:
    for start in range(0, spec.customers, CHUNK):
        n = min(CHUNK, spec.customers - start)
        ids = np.arange(start + 1, start + n + 1)
        has_email = rng.random(n) < 0.92
        shares_email = rng.random(n) < 0.01
        status = rng.choice(4, size=n, p=[0.60, 0.20, 0.15, 0.05])
        first, last = rng.integers(0, len(FIRST_NAMES), n), rng.integers(0, len(LAST_NAMES), n)
        tier, source = rng.integers(0, len(TIERS), n), rng.integers(0, len(SOURCES), n)
        age, points = rng.integers(18, 81, n), rng.integers(0, 20_000, n)
        vip = rng.random(n) < 0.05
        birthday = rng.integers(0, 365 * 60, n)
        city, other_city = rng.integers(0, len(CITIES), n), rng.integers(0, len(CITIES), n)
        house = rng.integers(1, 400, n)
        shipping_roll, billing_roll = rng.random(n), rng.random(n)
        created = _timestamps(data.customer_created[start : start + n])
        lines = []
        for i in range(n):
            cid = int(ids[i])
            email_id = cid - 1 if shares_email[i] and cid > 1 else cid
            email = f"customer{email_id}@example.com" if has_email[i] else None
            attributes = json.dumps(
                {
                    "tier": TIERS[tier[i]],
                    "age": int(age[i]),
                    "vip": bool(vip[i]),
                    "source": SOURCES[source[i]],
                    "loyalty_points": int(points[i]),
                    "birthday": str(np.datetime64("1950-01-01") + int(birthday[i])),
                }
            )
            shipping = _address(city[i], house[i], "Main St") if shipping_roll[i] < 0.95 else None
            if billing_roll[i] < 0.70:
                billing = shipping
            elif billing_roll[i] < 0.90:
                billing = _address(other_city[i], house[i] + 1, "Market St")
            else:
                billing = None
            values = (
                str(cid),
                f"c{cid:07d}",
                _text(email),
                FIRST_NAMES[first[i]],
                LAST_NAMES[last[i]],
                STATUSES[status[i]] if email else "pending",
                attributes,
                _text(shipping),
                _text(billing),
                created[i],
                created[i],
            )
            lines.append("\t".join(values))
        yield "\n".join(lines) + "\n"


def _order_rows(spec: DatasetSpec, data: _Generated) -> Iterator[str]:
    statuses = ("placed", "cancelled", "refunded")
    for start in range(0, spec.orders, CHUNK):
        stop = min(spec.orders, start + CHUNK)
        placed = _timestamps(data.order_placed[start:stop])
        customer = data.order_customer[start:stop].tolist()
        status = data.order_status[start:stop].tolist()
        cents = data.order_total_cents[start:stop].tolist()
        lines = [
            f"{oid}\to{oid:08d}\t{customer[i]}\t{cents[i] // 100}.{cents[i] % 100:02d}\tUSD\t"
            f"{placed[i]}\t{statuses[status[i]]}\t{placed[i]}\t{placed[i]}"
            for i, oid in enumerate(range(start + 1, stop + 1))
        ]
        yield "\n".join(lines) + "\n"


async def _chunks(rows: Iterator[str]) -> AsyncIterator[bytes]:
    for chunk in rows:
        yield chunk.encode()
        await asyncio.sleep(0)


async def _without_secondary_indexes(conn: asyncpg.Connection, tables: list[str]) -> list[str]:
    """Drop unique and foreign-key constraints and plain indexes (loading is much faster
    without them); returns the statements that restore them exactly."""
    restore: list[str] = []
    for table in tables:
        constraints = await conn.fetch(
            "SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint "
            "WHERE conrelid = $1::regclass AND contype IN ('u', 'f')",
            table,
        )
        indexes = await conn.fetch(
            "SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def "
            "FROM pg_index i WHERE i.indrelid = $1::regclass AND NOT i.indisprimary "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
            table,
        )
        for row in constraints:
            await conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {_quoted(row['conname'])}")
            restore.append(
                f"ALTER TABLE {table} ADD CONSTRAINT {_quoted(row['conname'])} {row['definition']}"
            )
        for row in indexes:
            await conn.execute(f"DROP INDEX {row['name']}")
            restore.append(row["def"])
    # Unique constraints first: the foreign keys need them.
    return sorted(restore, key=lambda statement: "FOREIGN KEY" in statement)


async def _load(url: str, spec: DatasetSpec) -> None:
    rng, data = _generate(spec)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("SET maintenance_work_mem = '512MB'")
        restore = await _without_secondary_indexes(conn, ["orders", "customers"])
        await conn.copy_to_table(
            "customers",
            source=_chunks(_customer_rows(spec, rng, data)),
            columns=[
                "id",
                "external_id",
                "email",
                "first_name",
                "last_name",
                "email_status",
                "attributes",
                "shipping_address",
                "billing_address",
                "created_at",
                "updated_at",
            ],
        )
        await conn.copy_to_table(
            "orders",
            source=_chunks(_order_rows(spec, data)),
            columns=[
                "id",
                "external_id",
                "customer_id",
                "total",
                "currency",
                "placed_at",
                "status",
                "created_at",
                "updated_at",
            ],
        )
        for statement in restore:
            await conn.execute(statement)
        for table in ("customers", "orders"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT coalesce(max(id), 1) FROM {table}))"
            )
        # Frozen and all-visible: clones start with index-only scans and no vacuum debt.
        await conn.execute("VACUUM (FREEZE, ANALYZE) customers, orders")
    finally:
        await conn.close()


async def ensure_template(spec: DatasetSpec, *, rebuild: bool = False) -> str:
    """The template database of this spec, built if missing; returns its name."""
    name = spec.template_name()
    admin = await asyncpg.connect(_dsn("postgres"))
    try:
        # One builder at a time across processes; the others wait and then find it built.
        await admin.execute("SELECT pg_advisory_lock(hashtext($1))", name)
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists and not rebuild:
            return name
        building = f"{name}_build"
        for stale in await admin.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1 || '%'", spec._prefix()
        ):
            await admin.execute(f"DROP DATABASE {_quoted(stale['datname'])} WITH (FORCE)")
        started = time.perf_counter()
        url = database_url(building)
        await upgrade_async(url)
        await _load(url, spec)
        await admin.execute(f"ALTER DATABASE {_quoted(building)} RENAME TO {_quoted(name)}")
        # Nobody connects to a template by accident: a connection would block cloning.
        await admin.execute(f"ALTER DATABASE {_quoted(name)} ALLOW_CONNECTIONS false")
        print(f"built template {name} in {time.perf_counter() - started:.0f} s")
        return name
    finally:
        await admin.execute("SELECT pg_advisory_unlock(hashtext($1))", name)
        await admin.close()


async def clone(spec: DatasetSpec, database: str) -> str:
    """A fresh database holding the data set (dropped first if it exists); returns its URL."""
    template = await ensure_template(spec)
    admin = await asyncpg.connect(_dsn("postgres"))
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {_quoted(database)} WITH (FORCE)")
        # FILE_COPY copies the files instead of writing every page through the WAL.
        await admin.execute(
            f"CREATE DATABASE {_quoted(database)} TEMPLATE {_quoted(template)} STRATEGY = FILE_COPY"
        )
    finally:
        await admin.close()
    return database_url(database)


async def drop(database: str) -> None:
    admin = await asyncpg.connect(_dsn("postgres"))
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {_quoted(database)} WITH (FORCE)")
    finally:
        await admin.close()


async def create_segment(url: str, name: str, *, every: int = 1, offset: int = 0) -> uuid.UUID:
    """A manual segment holding the customers whose id % every == offset, its KPIs unmarked."""
    segment_id = uuid7()  # as the API creates them
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO segments (id, name, kind) VALUES ($1, $2, 'user')", segment_id, name
            )
            added = await conn.execute(
                "INSERT INTO segment_members (segment_id, customer_id) "
                "SELECT $1, id FROM customers WHERE id % $2 = $3 ORDER BY id",
                segment_id,
                every,
                offset,
            )
            await conn.execute(
                "UPDATE segments SET member_count = $2, membership_version = 1 WHERE id = $1",
                segment_id,
                int(added.split()[-1]),
            )
        await conn.execute("VACUUM ANALYZE segment_members")
    finally:
        await conn.close()
    return segment_id


def arguments(description: str | None, repeat: int | None = None) -> argparse.ArgumentParser:
    """The command line of a benchmark on this data set: its size and, with `repeat`, the
    number of rounds (that many by default)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--customers", type=int, default=DatasetSpec.customers)
    parser.add_argument("--orders", type=int, default=DatasetSpec.orders)
    if repeat is not None:
        parser.add_argument("--repeat", type=int, default=repeat)
    return parser


def spec_of(args: argparse.Namespace) -> DatasetSpec:
    return DatasetSpec(customers=args.customers, orders=args.orders)


def _main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--seed", type=int, default=DatasetSpec.seed)
    parser.add_argument("--rebuild", action="store_true", help="build again even if it exists")
    args = parser.parse_args()
    spec = DatasetSpec(customers=args.customers, orders=args.orders, seed=args.seed)
    print(asyncio.run(ensure_template(spec, rebuild=args.rebuild)))


if __name__ == "__main__":
    _main()

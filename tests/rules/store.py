"""A small, varied store written straight to the database, with the same data as Python
objects for the reference evaluation. Moments sit at least 12 hours away from any whole
number of days before now, so rules with day counts never sit on a boundary."""

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.rules.reference import Person

STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending")
FIRST_NAMES = ("Ada", "ada", "Alan", "Grace", "Linus", "O'Neil", "100%", "snake_case", None)
LAST_NAMES = ("Lovelace", "Turing", "Hopper", "", None)
CITIES = ("Berlin", "berlin", "Paris", "Austin", "Zürich")
TOTALS = ("0.00", "5.00", "12.50", "19.99", "30.00", "100.00", "250.05")
TIERS = ("gold", "silver", "bronze", "Gold")


def _attributes(rng: random.Random) -> dict[str, Any]:
    choices: dict[str, Any] = {
        "tier": rng.choice(TIERS),
        "age": rng.randint(18, 80),
        "score": rng.choice([0.5, 3.5, 7.25, 10]),
        "vip": rng.choice([True, False]),
        "code": rng.choice([10, "10", "abc", 10.0, True]),
        "note": rng.choice(["hello world", "Hello", "", "world"]),
    }
    return {key: value for key, value in choices.items() if rng.random() < 0.7}


def _address(rng: random.Random) -> dict[str, str] | None:
    if rng.random() < 0.2:
        return None
    parts = {
        "line1": f"{rng.randint(1, 99)} Main St",
        "city": rng.choice(CITIES),
        "postal_code": rng.choice(["10115", "75001", "73301"]),
        "country": rng.choice(["DE", "FR", "US"]),
    }
    return {key: value for key, value in parts.items() if rng.random() < 0.85}


def ago(now: datetime, days: int, hours: int = 12) -> datetime:
    return now - timedelta(days=days, hours=hours)


def build(now: datetime, seed: int = 7, customers: int = 40) -> tuple[list[Person], list[str]]:
    rng = random.Random(seed)
    segments = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(2)]
    people = []
    for index in range(1, customers + 1):
        first = rng.choice(FIRST_NAMES)
        email = None if rng.random() < 0.15 else f"{(first or 'x').lower()[:4]}{index}@example.com"
        person = Person(
            id=index,
            external_id=f"c{index:03d}",
            email=email,
            email_status=rng.choice(STATUSES),
            first_name=first,
            last_name=rng.choice(LAST_NAMES),
            created_at=ago(now, rng.randint(0, 800)),
            attributes=_attributes(rng),
            shipping_address=_address(rng),
            billing_address=_address(rng),
        )
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3, 6])):
            status = "placed" if rng.random() < 0.8 else rng.choice(["cancelled", "refunded"])
            person.orders.append(
                (Decimal(rng.choice(TOTALS)), ago(now, rng.randint(0, 700)), status)
            )
        if person.placed() and rng.random() < 0.8:
            person.rfm = (rng.randint(1, 5), rng.randint(1, 5), rng.randint(1, 5))
        person.segments = {segment for segment in segments if rng.random() < 0.4}
        people.append(person)
    return people, segments


async def write(engine: AsyncEngine, people: list[Person], segments: list[str]) -> None:
    async with engine.begin() as conn:
        for segment in segments:
            await conn.execute(
                text("INSERT INTO segments (id, name) VALUES (:id, :name)"),
                {"id": segment, "name": f"Segment {segment[:8]}"},
            )
        order_id = 0
        for person in people:
            await conn.execute(
                text(
                    "INSERT INTO customers (id, external_id, email, email_status, first_name, "
                    "last_name, created_at, attributes, shipping_address, billing_address) "
                    "VALUES (:id, :external_id, :email, :email_status, :first_name, :last_name, "
                    ":created_at, CAST(:attributes AS jsonb), CAST(:shipping AS jsonb), "
                    "CAST(:billing AS jsonb))"
                ),
                {
                    "id": person.id,
                    "external_id": person.external_id,
                    "email": person.email,
                    "email_status": person.email_status,
                    "first_name": person.first_name,
                    "last_name": person.last_name,
                    "created_at": person.created_at,
                    "attributes": json.dumps(person.attributes),
                    "shipping": _json(person.shipping_address),
                    "billing": _json(person.billing_address),
                },
            )
            for total, placed_at, status in person.orders:
                order_id += 1
                await conn.execute(
                    text(
                        "INSERT INTO orders (external_id, customer_id, total, currency, placed_at, "
                        "status) VALUES (:e, :c, :t, 'USD', :p, :s)"
                    ),
                    {"e": f"o{order_id}", "c": person.id, "t": total, "p": placed_at, "s": status},
                )
            if person.rfm is not None:
                placed = person.placed()
                await conn.execute(
                    text(
                        "INSERT INTO customer_rfm VALUES (:c, :last, :f, :m, :rs, :fs, :ms, now())"
                    ),
                    {
                        "c": person.id,
                        "last": max(at for _, at in placed),
                        "f": len(placed),
                        "m": sum(total for total, _ in placed),
                        "rs": person.rfm[0],
                        "fs": person.rfm[1],
                        "ms": person.rfm[2],
                    },
                )
            for segment in person.segments:
                await conn.execute(
                    text("INSERT INTO segment_members (segment_id, customer_id) VALUES (:s, :c)"),
                    {"s": segment, "c": person.id},
                )
        await conn.execute(
            text("SELECT setval(pg_get_serial_sequence('customers', 'id'), :n)"),
            {"n": len(people)},
        )


def _json(value: object) -> str | None:
    return None if value is None else json.dumps(value)


def now_utc() -> datetime:
    return datetime.now(UTC)

"""`segments-admin`: API keys, dead letters and metrics maintenance."""

import argparse
import asyncio
import json
import sys
import uuid

import aio_pika
from sqlalchemy import text

from segments_shared.apikeys import SCOPES, create_key, list_keys, revoke_key
from segments_shared.bus.connection import broker_addresses, connect_first
from segments_shared.bus.topology import SERVICE_BINDINGS, Topology, declare_service_queue
from segments_shared.config import BrokerSettings, DatabaseSettings
from segments_shared.db.engine import create_engine
from segments_shared.jobs import store


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


async def _create_key(name: str, scopes: list[str]) -> None:
    engine = create_engine(DatabaseSettings(), pool_size=1)
    try:
        async with engine.begin() as conn:
            key, info = await create_key(conn, name, scopes)
    finally:
        await engine.dispose()
    _out(f"id: {info.id}")
    _out(f"scopes: {','.join(info.scopes)}")
    _out(f"key: {key}")
    _out("Store the key now: it is not shown again.")


async def _list_keys() -> None:
    engine = create_engine(DatabaseSettings(), pool_size=1)
    try:
        async with engine.connect() as conn:
            keys = await list_keys(conn)
    finally:
        await engine.dispose()
    for key in keys:
        _out(json.dumps(key, default=str))


async def _revoke_key(key_id: uuid.UUID) -> bool:
    engine = create_engine(DatabaseSettings(), pool_size=1)
    try:
        async with engine.begin() as conn:
            return await revoke_key(conn, key_id)
    finally:
        await engine.dispose()


async def _replay_dlq(service: str, limit: int | None) -> int:
    """Move dead letters back onto the service's own queue (not the exchange: other
    services already processed them)."""
    settings = BrokerSettings()
    topology = Topology(settings.bus_prefix)
    addresses = broker_addresses(settings.amqp_url.get_secret_value())
    connection, _ = await connect_first(addresses, "segments-admin")
    moved = 0
    try:
        channel = await connection.channel(publisher_confirms=True)
        await declare_service_queue(channel, topology, service)
        dlq = await channel.get_queue(topology.dead_letter_queue(service), ensure=False)
        while limit is None or moved < limit:
            message = await dlq.get(fail=False, no_ack=False)
            if message is None:
                break
            headers = {k: v for k, v in (message.headers or {}).items() if not k.startswith("x-")}
            await channel.default_exchange.publish(
                aio_pika.Message(
                    message.body,
                    headers=headers,
                    content_type=message.content_type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=message.message_id,
                    type=message.type,
                    correlation_id=message.correlation_id,
                ),
                routing_key=topology.service_queue(service),
                timeout=10,
            )
            await message.ack()
            moved += 1
    finally:
        await connection.close()
    return moved


async def _recompute_metrics() -> int:
    """Ask the metrics-worker for a full check of every segment's KPIs against the orders,
    and for everyone's RFM scores; returns how many segments it checks."""
    engine = create_engine(DatabaseSettings(), pool_size=1)
    try:
        async with engine.begin() as conn:
            for queue in ("kpi_check", "rfm"):
                await store.request(conn, queue, "all")
            segments = await conn.execute(text("SELECT count(*) FROM segments"))
            return int(segments.scalar_one())
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segments-admin", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create-key", help="create an API key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scopes", required=True, help=f"comma-separated, from: {', '.join(SCOPES)}"
    )
    commands.add_parser("list-keys", help="list API keys (never the keys themselves)")
    revoke = commands.add_parser("revoke-key", help="revoke an API key by id")
    revoke.add_argument("key_id", type=uuid.UUID)
    replay = commands.add_parser("replay-dlq", help="put a service's dead letters back")
    replay.add_argument("service", choices=sorted(SERVICE_BINDINGS))
    replay.add_argument("--limit", type=int, default=None)
    commands.add_parser(
        "recompute-metrics",
        help="check every segment's KPIs against the orders and recompute every RFM score",
    )
    args = parser.parse_args(argv)

    if args.command == "create-key":
        scopes = [scope.strip() for scope in args.scopes.split(",") if scope.strip()]
        try:
            asyncio.run(_create_key(args.name, scopes))
        except ValueError as exc:
            parser.error(str(exc))
    elif args.command == "list-keys":
        asyncio.run(_list_keys())
    elif args.command == "revoke-key":
        if not asyncio.run(_revoke_key(args.key_id)):
            sys.stderr.write("segments-admin: no active key with that id\n")
            return 1
        _out(f"revoked {args.key_id}")
    elif args.command == "replay-dlq":
        _out(f"replayed {asyncio.run(_replay_dlq(args.service, args.limit))} messages")
    else:
        _out(f"asked for a check of {asyncio.run(_recompute_metrics())} segments and RFM scores")
    return 0


if __name__ == "__main__":
    sys.exit(main())

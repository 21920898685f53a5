"""An open-loop HTTP load generator, run as its own process so that it never shares an event
loop (or a core's worth of Python) with what it measures.

    python -m bench.loadgen --url http://127.0.0.1:8000 --rate 500 --seconds 20 \\
        --connections 32 --key <api key>

Sends `PUT /v1/customers/<prefix>-<i>` at a steady rate over keep-alive connections, with raw
asyncio streams (an HTTP client library costs more CPU per request than the server under
test). Request i is due at start + i / rate; its latency counts from that moment, so a server
that falls behind shows its queue instead of slowing the schedule (no coordinated omission).
Prints one JSON line: the latencies in ms, the statuses, and the rate reached.
"""

import argparse
import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from urllib.parse import urlsplit


def request_bytes(
    host: str,
    key: str,
    path: str,
    body: bytes,
    *,
    method: str = "PUT",
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def run(
    url: str, rate: float, seconds: float, connections: int, key: str, prefix: str
) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    total = int(rate * seconds)
    due: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                index, scheduled = await due.get()
                if index < 0:
                    return
                body = b'{"first_name": "Bench"}'
                path = f"/v1/customers/{prefix}-{index}"
                writer.write(request_bytes(f"{host}:{port}", key, path, body))
                statuses[await read_response(reader)] += 1
                latencies.append(time.perf_counter() - scheduled)
        finally:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    started = time.perf_counter()
    for index in range(total):
        scheduled = started + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        due.put_nowait((index, scheduled))
    for _ in workers:
        due.put_nowait((-1, 0.0))
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - started
    return {
        "latencies_ms": [round(value * 1000, 3) for value in latencies],
        "statuses": {str(status): count for status, count in statuses.items()},
        "rate": total / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--key", required=True)
    parser.add_argument("--prefix", default="bench")
    args = parser.parse_args()
    result = asyncio.run(
        run(args.url, args.rate, args.seconds, args.connections, args.key, args.prefix)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

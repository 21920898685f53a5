"""segment-api throughput on a 1,000,000-customer, 5,000,000-order store (issue 4), each
figure beside a baseline measured in the same run.

    python -m bench.api_throughput [--customers 1000000] [--orders 5000000] [--skip-http]

- bulk customer upsert through the API (10 calls of 10,000) against a plain `COPY` of the
  same rows into the same table;
- adding 10,000 members in one call;
- CSV download of a 1,000,000-member segment (rows/s and the API process's RSS growth)
  against reading the same query through a bare server-side cursor;
- `GET /v1/segments/{id}` and `PUT /v1/customers/{id}` under wrk (one API process, 32
  connections, 15 s after a 3 s warm-up) beside a bare FastAPI endpoint served the same way.
  Needs `wrk` (`apt-get install wrk`); `--skip-http` leaves these out.
"""

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import asyncpg
import httpx

from bench.common import (
    api_env,
    bench_prefix,
    free_port,
    remove_topology,
    start_service,
)
from bench.dataset import DatasetSpec, clone, create_segment, drop
from segments_shared.db.engine import asyncpg_dsn

KEY = "sk_bench_admin_key_0123456789"
BIN = Path(sys.executable).parent
DATABASE = "segments_bench_api"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def start_api(url: str, prefix: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    process = await start_service("segment-api", api_env(url, prefix, port, KEY), port)
    return process, f"http://127.0.0.1:{port}"


def customer(i: int, prefix: str) -> dict[str, object]:
    return {
        "external_id": f"{prefix}{i}",
        "email": f"{prefix}{i}@example.com",
        "first_name": "Bench",
        "last_name": "Mark",
        "email_status": "subscribed",
        "attributes": {"tier": "gold", "points": i % 1000},
    }


async def bulk_upsert(url: str, base: str, count: int) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    rows = [
        (
            f"copy{i}",
            f"copy{i}@example.com",
            "Bench",
            "Mark",
            "subscribed",
            json.dumps({"tier": "gold", "points": i % 1000}),
        )
        for i in range(count)
    ]
    started = time.perf_counter()
    await conn.copy_records_to_table(
        "customers",
        records=rows,
        columns=["external_id", "email", "first_name", "last_name", "email_status", "attributes"],
    )
    copy_rate = count / (time.perf_counter() - started)
    await conn.close()

    batches = [
        [customer(i, "api") for i in range(s, min(s + 10_000, count))]
        for s in range(0, count, 10_000)
    ]
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=120
    ) as client:
        started = time.perf_counter()
        for batch in batches:
            response = await client.post("/v1/customers/bulk", json={"customers": batch})
            response.raise_for_status()
        api_rate = count / (time.perf_counter() - started)
    print(
        f"bulk upsert via API: {api_rate:,.0f} customers/s; plain COPY: {copy_rate:,.0f} rows/s;"
        f" API / COPY: {api_rate / copy_rate:.2f}"
    )


async def add_members(url: str, base: str) -> None:
    segment = await create_segment(url, "Bench manual", every=10**9)  # empty
    timings = []
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    ) as client:
        for round_ in range(3):
            ids = [f"c{(round_ * 10_000 + i) * 7 + 1:07d}" for i in range(10_000)]
            started = time.perf_counter()
            response = await client.post(
                f"/v1/segments/{segment}/members", json={"external_ids": ids}
            )
            timings.append(time.perf_counter() - started)
            response.raise_for_status()
            assert response.json()["added"] == 10_000, response.json()
    print(f"add 10,000 members in one call: {sorted(timings)[1] * 1000:.0f} ms (median of 3)")


async def csv_download(url: str, base: str, api: asyncio.subprocess.Process) -> None:
    segment = await create_segment(url, "Bench everyone")
    conn = await asyncpg.connect(asyncpg_dsn(url))
    started = time.perf_counter()
    baseline_rows = 0
    async with conn.transaction():
        cursor = await conn.cursor(
            "SELECT c.email, c.first_name, c.last_name FROM segment_members m "
            "JOIN customers c ON c.id = m.customer_id WHERE m.segment_id = $1 "
            "AND c.email IS NOT NULL ORDER BY c.email, c.external_id",
            segment,
        )
        while rows := await cursor.fetch(5000):
            baseline_rows += len(rows)
    baseline = baseline_rows / (time.perf_counter() - started)
    await conn.close()

    before = rss_mb(api.pid)
    peak = before
    rows = 0
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=600
    ) as client:
        started = time.perf_counter()
        async with client.stream(
            "GET", f"/v1/segments/{segment}/export.csv", params={"include": "first_name,last_name"}
        ) as response:
            async for chunk in response.aiter_bytes():
                rows += chunk.count(b"\n")
                peak = max(peak, rss_mb(api.pid))
        elapsed = time.perf_counter() - started
    rows -= 1  # the header
    print(
        f"CSV download: {rows:,} rows in {elapsed:.2f} s = {rows / elapsed:,.0f} rows/s; "
        f"bare server-side cursor: {baseline:,.0f} rows/s; ratio {rows / elapsed / baseline:.2f};"
        f" API RSS {before:.0f} MB -> peak {peak:.0f} MB (+{peak - before:.0f} MB)"
    )


def wrk(url: str, script: str | None = None, seconds: int = 15) -> tuple[float, str]:
    command = [
        "wrk",
        "-t1",
        "-c32",
        f"-d{seconds}s",
        "--latency",
        "-H",
        f"Authorization: Bearer {KEY}",
    ]
    if script:
        command += ["-s", script]
    # A short unmeasured run first: the pool opens its connections, statements get prepared.
    warm_up = [part if not part.startswith("-d") else "-d3s" for part in command]
    subprocess.run([*warm_up, url], capture_output=True, text=True, check=True)
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+(\S+)", output).group(1)  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        raise RuntimeError(f"{non_2xx.group(1)} failed requests:\n{output}")
    return rate, p99


BARE_APP = textwrap.dedent(
    """
    from fastapi import FastAPI
    app = FastAPI()

    @app.get("/bare/{item_id}")
    async def bare(item_id: str) -> dict[str, str]:
        return {"id": item_id, "name": "bare"}

    @app.put("/bare/{item_id}")
    async def bare_put(item_id: str, body: dict[str, str]) -> dict[str, str]:
        return {"id": item_id, **body}
    """
)

PUT_SCRIPT = textwrap.dedent(
    """
    math.randomseed(os.time())
    request = function()
      local id = "w" .. math.random(1, 1000000000)
      -- A headers table replaces wrk's -H headers, so the key goes here too.
      return wrk.format("PUT", "%s" .. id,
        {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %s"},
        '{"first_name": "B", "email": "b' .. id .. '@example.com"}')
    end
    """
)


async def http_rates(url: str, base: str) -> None:
    segment = await create_segment(url, "Bench read", every=1000)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "bare.py").write_text(BARE_APP)
        bare_port = free_port()
        bare = await asyncio.create_subprocess_exec(
            str(BIN / "uvicorn"),
            "bare:app",
            "--port",
            str(bare_port),
            "--log-level",
            "warning",
            "--no-access-log",
            cwd=folder,
        )
        try:
            await asyncio.sleep(2)
            bare_base = f"http://127.0.0.1:{bare_port}"
            bare_get, bare_get_p99 = wrk(f"{bare_base}/bare/abc")
            put_bare = Path(folder) / "put_bare.lua"
            put_bare.write_text(PUT_SCRIPT % ("/bare/", KEY))
            bare_put, bare_put_p99 = wrk(bare_base, str(put_bare))
        finally:
            bare.terminate()
            await bare.wait()
        api_get, api_get_p99 = wrk(f"{base}/v1/segments/{segment}")
        put_api = Path(folder) / "put_api.lua"
        put_api.write_text(PUT_SCRIPT % ("/v1/customers/", KEY))
        api_put, api_put_p99 = wrk(base, str(put_api))
    print(
        f"GET /v1/segments/{{id}}: {api_get:,.0f} req/s, p99 {api_get_p99}; bare FastAPI GET: "
        f"{bare_get:,.0f} req/s, p99 {bare_get_p99}; ratio {api_get / bare_get:.2f}"
    )
    print(
        f"PUT /v1/customers/{{id}}: {api_put:,.0f} req/s, p99 {api_put_p99}; bare FastAPI PUT:"
        f" {bare_put:,.0f} req/s, p99 {bare_put_p99}; ratio {api_put / bare_put:.2f}"
    )


async def main(customers: int, orders: int, skip_http: bool) -> None:
    url = await clone(DatasetSpec(customers=customers, orders=orders), DATABASE)
    # The default rule segments would be computed (five full scans of the store) as the API
    # starts; that is the refresher's work, measured in bench.rules_refresh, not the API's.
    conn = await asyncpg.connect(asyncpg_dsn(url))
    await conn.execute("UPDATE segments SET active = false WHERE kind = 'default'")
    await conn.close()
    prefix = bench_prefix()
    api, base = await start_api(url, prefix)
    try:
        print(f"store: {customers:,} customers, {orders:,} orders; one segment-api process")
        await bulk_upsert(url, base, 100_000)
        await add_members(url, base)
        await csv_download(url, base, api)
        if skip_http or not shutil.which("wrk"):
            print("HTTP rates skipped (needs wrk)")
        else:
            await http_rates(url, base)
    finally:
        api.terminate()
        await api.wait()
        await remove_topology(prefix)
        await drop(DATABASE)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=5_000_000)
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.customers, args.orders, args.skip_http))

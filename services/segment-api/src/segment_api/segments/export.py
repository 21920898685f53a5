"""CSV download of a segment (docs/contract.md#segments-and-rules): RFC 4180, UTF-8, one row
per member with an email, sorted by email, streamed from a server-side cursor so memory
stays flat."""

import csv
import io
import re
import urllib.parse
import uuid
from collections.abc import AsyncGenerator

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from segment_api.problems import parameter_error
from segments_shared.db.engine import driver_connection

ADDRESS_PARTS = ("line1", "line2", "city", "region", "postal_code", "country")
INCLUDES = ("first_name", "last_name", "shipping_address", "billing_address")
ROWS_PER_CHUNK = 5000


def parse_include(value: str | None) -> list[str]:
    """The asked-for columns, in the contract's order whatever order they are asked in
    (docs/contract.md#segments-and-rules); unknown names are a 422."""
    asked = [part.strip() for part in (value or "").split(",") if part.strip()]
    unknown = [part for part in asked if part not in INCLUDES]
    if unknown:
        raise parameter_error(
            "include", f"unknown column(s) {', '.join(unknown)}; choose from {', '.join(INCLUDES)}"
        )
    return [name for name in INCLUDES if name in asked]


def _guarded(expression: str) -> str:
    """A cell starting like a formula gets a leading apostrophe (CSV injection)."""
    return (
        f"CASE WHEN left({expression}, 1) IN ('=', '+', '-', '@', E'\\t', E'\\r') "
        f"THEN '''' || {expression} ELSE {expression} END"
    )


def columns(include: list[str]) -> list[tuple[str, str]]:
    """(header, SQL expression) of each column; expressions are fixed, never user input."""
    result = [("email", "c.email")]
    for name in include:
        if name.endswith("_address"):
            result += [(f"{name}_{part}", f"(c.{name} ->> '{part}')") for part in ADDRESS_PARTS]
        else:
            result.append((name, f"c.{name}"))
    return result


def query(include: list[str]) -> str:
    selected = ", ".join(_guarded(expression) for _, expression in columns(include))
    return f"""
        SELECT {selected}
        FROM segment_members m JOIN customers c ON c.id = m.customer_id
        WHERE m.segment_id = $1 AND c.email IS NOT NULL
        ORDER BY c.email, c.external_id
    """


class CsvResponse(StreamingResponse):
    """A streamed download that closes its rows' generator whatever ends the response. A
    client that leaves mid-download stops Starlette's loop over the rows at a yield, and
    the generator, left open, would hold its connection in the middle of a transaction
    until the garbage collector got to it; closed here, its clean-up runs at once."""

    def __init__(self, rows: AsyncGenerator[bytes, None], headers: dict[str, str]) -> None:
        super().__init__(rows, media_type="text/csv; charset=utf-8", headers=headers)
        self.rows = rows

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.rows.aclose()


def filename(segment_name: str) -> str:
    """`Content-Disposition` with an ASCII fallback and the UTF-8 name (RFC 6266)."""
    ascii_name = re.sub(r"[^A-Za-z0-9._ -]+", "_", segment_name).strip() or "segment"
    quoted = urllib.parse.quote(segment_name, safe="")
    return f"attachment; filename=\"{ascii_name}.csv\"; filename*=UTF-8''{quoted}.csv"


async def stream_csv(
    engine: AsyncEngine, segment_id: uuid.UUID, include: list[str]
) -> AsyncGenerator[bytes, None]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([header for header, _ in columns(include)])
    yield buffer.getvalue().encode()
    conn = await engine.connect()
    finished = False
    try:
        driver = await driver_connection(conn)
        async with driver.transaction(readonly=True):  # server-side cursors live in one
            await driver.execute("SET LOCAL work_mem = '128MB'")  # sort in memory
            # From a prepared statement: a cursor of its own names its statement even with
            # the statement cache off (docs/operations.md#behind-pgbouncer).
            statement = await driver.prepare(query(include))
            cursor = await statement.cursor(segment_id)
            while rows := await cursor.fetch(ROWS_PER_CHUNK):
                buffer.seek(0)
                buffer.truncate()
                writer.writerows(rows)
                yield buffer.getvalue().encode()
        finished = True
    finally:
        # A client that leaves mid-download cancels this (or closes it at a yield): the
        # transaction's end may never have reached the server, and a connection still in it
        # would poison the pool (every later transaction a savepoint inside it, read-only).
        # Such a connection is closed instead of pooled; shielded, so the cancellation
        # cannot cut the clean-up short.
        with anyio.CancelScope(shield=True):
            if not finished:
                await conn.invalidate()
            await conn.close()

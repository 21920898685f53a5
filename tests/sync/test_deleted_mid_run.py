"""A destination or segment deleted while its run is being carried out: the run went with it
(the foreign keys cascade), so the worker drops it with one line saying why, without a crash,
without leaving rows behind for the deleted destination or segment, and goes on to other runs.

The vendor fake sits behind a gate that holds the run's first matching request until the test
has deleted what the run syncs, so the run is mid-flight at the deletion every time."""

import asyncio
import fnmatch
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY
from sqlalchemy import text
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.fakes import mailchimp, webhook
from tests.fakes.server import serve
from tests.support.waiting import eventually
from tests.sync.conftest import Harness, people


@dataclass
class Gate:
    """ASGI wrapper holding every request that matches `method` and `path` (a glob) until
    opened; `arrived` is set by the first one."""

    app: ASGIApp
    method: str
    path: str
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == self.method
            and fnmatch.fnmatchcase(scope["path"], self.path)
        ):
            self.arrived.set()
            await self.opened.wait()
        await self.app(scope, receive, send)


@dataclass
class Gated:
    gate: Gate
    url: str


@pytest_asyncio.fixture
async def gated_webhook() -> AsyncIterator[tuple[webhook.WebhookState, Gated]]:
    """A webhook receiver whose batches wait at the gate."""
    state = webhook.WebhookState()
    gate = Gate(webhook.create_app(state), "POST", "/hooks/*")
    async with serve(gate) as url:
        try:
            yield state, Gated(gate, url)
        finally:
            gate.opened.set()


@pytest_asyncio.fixture
async def gated_mailchimp() -> AsyncIterator[tuple[mailchimp.MailchimpState, Gated]]:
    """A Mailchimp fake whose segment look-ups (finding the remote segment by name) wait."""
    state = mailchimp.MailchimpState()
    state.add_list("list1")
    gate = Gate(mailchimp.create_app(state), "GET", "/3.0/lists/*/segments")
    async with serve(gate) as url:
        try:
            yield state, Gated(gate, url)
        finally:
            gate.opened.set()


def deleted_count() -> float:
    value = REGISTRY.get_sample_value("segments_sync_runs_handled_total", {"outcome": "deleted"})
    return value or 0.0


def worker_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("sync_worker")]


async def start(harness: Harness, segment_id: str, destination_id: str) -> str:
    response = await harness.api.post(
        f"/v1/segments/{segment_id}/syncs", json={"destination_id": destination_id}
    )
    assert response.status_code == 202, response.text
    harness.worker.runner.wake()
    run_id: str = response.json()["id"]
    return run_id


async def dropped(caplog: pytest.LogCaptureFixture, run_id: str) -> logging.LogRecord:
    """The worker's line saying the run ended because it was deleted."""

    async def probe() -> list[logging.LogRecord]:
        return [
            r
            for r in worker_records(caplog)
            if getattr(r, "sync_id", None) == run_id and "was deleted" in r.getMessage()
        ]

    found = await eventually(probe, bool, within=20)
    assert len(found) == 1, [r.getMessage() for r in worker_records(caplog)]
    return found[0]


async def delete(harness: Harness, deleting: str, segment_id: str, destination_id: str) -> None:
    """Through the API, as a user would, while the run waits at the gate."""
    gone = destination_id if deleting == "destination" else segment_id
    response = await harness.api.delete(f"/v1/{deleting}s/{gone}")
    assert response.status_code == 204, response.text


async def deleted_mid_flight(
    harness: Harness,
    gated: Gated,
    caplog: pytest.LogCaptureFixture,
    deleting: str,
    segment_id: str,
    destination_id: str,
) -> logging.LogRecord:
    """Start the run, delete what it syncs while its request waits at the gate, let the
    request through: the worker's one line about the run, which says what was deleted."""
    run_id = await start(harness, segment_id, destination_id)
    await asyncio.wait_for(gated.gate.arrived.wait(), 20)
    await delete(harness, deleting, segment_id, destination_id)
    gated.gate.opened.set()
    line = await dropped(caplog, run_id)
    assert line.getMessage() == f"sync run ended: its {deleting} was deleted"
    return line


async def record_rows(harness: Harness, column: str, value: str) -> int:
    async with harness.engine.connect() as conn:
        count = await conn.execute(
            text(f"SELECT count(*) FROM destination_members WHERE {column} = :v"), {"v": value}
        )
        return int(count.scalar_one())


def assert_no_crash(caplog: pytest.LogCaptureFixture, harness: Harness) -> None:
    troubles = [r for r in worker_records(caplog) if r.levelno >= logging.ERROR]
    assert troubles == [], [(r.getMessage(), r.exc_text) for r in troubles]
    assert not any("handed over" in r.getMessage() for r in worker_records(caplog))
    assert not harness.worker.task.done()


@pytest.mark.asyncio
@pytest.mark.parametrize("deleting", ["destination", "segment"])
async def test_deleted_while_the_remote_segment_is_resolved(
    harness: Harness,
    gated_mailchimp: tuple[mailchimp.MailchimpState, Gated],
    caplog: pytest.LogCaptureFixture,
    deleting: str,
) -> None:
    """The fuzzer's case: the run goes on to remember the remote segment it found after
    the destination (or segment), and the run with it, are gone."""
    caplog.set_level(logging.INFO, logger="sync_worker")
    state, gated = gated_mailchimp
    config = {
        "api_key": mailchimp.DEFAULT_API_KEY,
        "list_id": "list1",
        "base_url": f"{gated.url}/3.0",
    }
    await harness.customers(*people(5))
    segment_id = await harness.segment("Doomed", ["c0", "c1", "c2"])
    other_segment = await harness.segment("Kept", ["c3", "c4"])
    destination_id = await harness.destination("mailchimp", config)
    before = deleted_count()

    line = await deleted_mid_flight(harness, gated, caplog, deleting, segment_id, destination_id)
    assert line.levelno == logging.INFO
    assert deleted_count() == before + 1
    async with harness.engine.connect() as conn:
        remembered = await conn.execute(
            text("SELECT count(*) FROM destination_segments WHERE segment_id = :s"),
            {"s": segment_id},
        )
        assert remembered.scalar_one() == 0

    # The worker carries on with another run, to another destination.
    other_destination = await harness.destination("mailchimp", config)
    run = await harness.sync(other_segment, other_destination)
    assert run["status"] == "succeeded", run
    assert state.lists["list1"].segment_named("Kept") is not None
    assert_no_crash(caplog, harness)


@pytest.mark.asyncio
@pytest.mark.parametrize("deleting", ["destination", "segment"])
async def test_deleted_while_a_batch_is_out(
    harness: Harness,
    gated_webhook: tuple[webhook.WebhookState, Gated],
    caplog: pytest.LogCaptureFixture,
    deleting: str,
) -> None:
    """The batch comes back after the deletion: nothing of it is recorded for what was
    deleted, and the run ends there."""
    caplog.set_level(logging.INFO, logger="sync_worker")
    state, gated = gated_webhook
    config = {"url": f"{gated.url}/hooks/segments", "secret": webhook.DEFAULT_SECRET}
    await harness.customers(*people(5))
    segment_id = await harness.segment("Doomed", ["c0", "c1", "c2"])
    other_segment = await harness.segment("Kept", ["c3", "c4"])
    destination_id = await harness.destination("webhook", config)
    other_destination = await harness.destination("webhook", config)
    before = deleted_count()

    await deleted_mid_flight(harness, gated, caplog, deleting, segment_id, destination_id)
    assert deleted_count() == before + 1
    # The receiver got the batch, but the worker records nothing for what is gone (the API
    # deleted the destination's record, and the segment's goes with `segment.deleted`).
    assert state.external_ids(segment_id) == {"c0", "c1", "c2"}
    gone_column, gone_id = (
        ("destination_id", destination_id)
        if deleting == "destination"
        else ("segment_id", segment_id)
    )
    assert await record_rows(harness, gone_column, gone_id) == 0

    # The worker carries on with another run.
    run = await harness.sync(other_segment, other_destination)
    assert run["status"] == "succeeded", run
    assert run["stats"]["added"] == 2
    assert state.external_ids(other_segment) == {"c3", "c4"}
    assert_no_crash(caplog, harness)

"""Sending the plan and recording what came back. The plan is worked through in rounds: each
round's batches are sent at once (the limiter keeps them within the vendor's limits), and as
batches come back one transaction records what the destination now holds, the rejected
records and the stats, and the read position once a whole round is back, under the run's
lease. The next round is read, and sent, while the previous one is being recorded.

A worker killed at any point leaves at most the rounds out (up to `Recorder.ROUNDS_AHEAD`)
past the position; the run's next holder sends them again, which adds and removes
idempotently, and counts nothing twice (the stats count what the record gained and lost).
"""

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncConnection

from sync_worker import planner, record, runs
from sync_worker.connectors.base import (
    BatchResult,
    Capabilities,
    Connector,
    ConnectorError,
    RemoteSegment,
    SyncMember,
)
from sync_worker.execution.state import Execution
from sync_worker.planner import Round


@dataclass(frozen=True)
class Batch:
    operation: Literal["add", "remove"]
    members: Sequence[SyncMember]


SentBatch = tuple[Batch, BatchResult | BaseException]


async def send_plan(execution: Execution, connector: Connector, remote: RemoteSegment) -> None:
    run = execution.run
    capabilities = connector.capabilities
    round_size = capabilities.concurrency * capabilities.batch_size
    streamed = execution.checkpoint.streamed

    async def read(after: int) -> Round:
        async with execution.engine.connect() as conn:
            return await planner.read_round(
                conn,
                run.id,
                run.segment_id,
                run.destination_id,
                capabilities,
                after=after,
                limit=round_size,
                streamed=streamed,
            )

    # Batches in flight, whatever their round: the next round starts sending while the last
    # batches of the previous one finish, instead of waiting for the slowest.
    sending = asyncio.Semaphore(capabilities.concurrency)
    recorder = Recorder(execution, streamed)
    recording = asyncio.create_task(recorder.run())
    try:
        current = await read(execution.checkpoint.position)
        while current and recorder.error is None:
            execution.check()
            await recorder.room.acquire()
            if recorder.error is not None:
                break
            recorder.add(
                current,
                [
                    asyncio.create_task(_send_batch(connector, remote, batch, sending))
                    for batch in _batches(capabilities, current)
                ],
            )
            current = await read(current.last)
    finally:
        # However the loop ends, the rounds that were sent are recorded first.
        recorder.close()
        await recording


@dataclass
class Flight:
    """A round being sent: its batches still out, and those back but not yet recorded."""

    round: Round
    out: list["asyncio.Task[SentBatch]"]
    failed: bool = False


class Recorder:
    """Records each batch once it is back, in one transaction for every batch back when the
    previous transaction ends (when the database is the slower side its commits grow instead
    of holding the sending back). The position moves past a round once all its batches are
    recorded and none failed as a whole; at most `ROUNDS_AHEAD` rounds are out at once, so a
    restart, reading the plan from the position, sends again at most those rounds."""

    ROUNDS_AHEAD = 4

    def __init__(self, execution: Execution, streamed: bool) -> None:
        self.execution = execution
        self.streamed = streamed
        self.room = asyncio.Semaphore(self.ROUNDS_AHEAD)
        self.error: BaseException | None = None
        self._flights: deque[Flight] = deque()
        self._arrived = asyncio.Event()
        self._closed = False
        self._recording = True
        # After a batch failed as a whole the position stays (its members are sent again by
        # whoever resumes the run, if it is resumed).
        self._advancing = True

    def add(self, sent: Round, batches: "list[asyncio.Task[SentBatch]]") -> None:
        self._flights.append(Flight(sent, list(batches)))
        self._arrived.set()

    def close(self) -> None:
        self._closed = True
        self._arrived.set()

    async def run(self) -> None:
        while self._flights or not self._closed:
            self._arrived.clear()
            sent: list[SentBatch] = []
            for flight in self._flights:
                for task in [task for task in flight.out if task.done()]:
                    flight.out.remove(task)
                    batch, result = task.result()
                    flight.failed = flight.failed or isinstance(result, BaseException)
                    sent.append((batch, result))
            through = self._landed()
            if not sent and through is None:
                out = [task for flight in self._flights for task in flight.out]
                arrival = asyncio.ensure_future(self._arrived.wait())
                try:
                    await asyncio.wait([*out, arrival], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    arrival.cancel()
                continue
            # Every batch that came back is recorded, even after a batch failed (the run then
            # fails and drops its plan: the record must show what the destination holds).
            if self._recording:
                try:
                    await _record_batches(self.execution, sent, through, self.streamed)
                except Exception as exc:
                    self._recording = False  # the lease or the database is gone
                    if self.error is None:
                        self.error = exc
            if self.error is None:
                self.error = _first_error(sent)
        if self.error is not None:
            raise self.error

    def _landed(self) -> int | None:
        """Take the leading rounds whose batches are all back off the flights (making room
        for more); the position after them, if it may move."""
        through = None
        while self._flights and not self._flights[0].out:
            flight = self._flights.popleft()
            self.room.release()
            self._advancing = self._advancing and not flight.failed
            if self._advancing:
                through = flight.round.last
        return through


def _first_error(sent: list[SentBatch]) -> BaseException | None:
    """A batch that failed as a whole ends the run (or, unexpected, has it resumed)."""
    for _, result in sent:
        if isinstance(result, BaseException):
            return result
    return None


def _batches(capabilities: Capabilities, current: Round) -> list[Batch]:
    adds, removes = current.adds, current.removes
    size, remove_size = capabilities.batch_size, capabilities.removal_batch_size
    return [
        *(Batch("add", adds[i : i + size]) for i in range(0, len(adds), size)),
        *(
            Batch("remove", removes[i : i + remove_size])
            for i in range(0, len(removes), remove_size)
        ),
    ]


async def _send_batch(
    connector: Connector, remote: RemoteSegment, batch: Batch, sending: asyncio.Semaphore
) -> SentBatch:
    """A batch and what came back: its result, or the error that failed it as a whole."""
    members = list(batch.members)
    try:
        async with sending:
            if batch.operation == "add":
                return batch, await connector.add_members(remote, members)
            return batch, await connector.remove_members(remote, members)
    except Exception as exc:
        return batch, exc


async def _record_batches(
    execution: Execution, sent: list[SentBatch], through: int | None, streamed: bool
) -> None:
    """One transaction: what the destination now holds after these batches, the rejected
    records, the stats, and the position (`through`, None: it stays)."""
    run = execution.run
    added: list[SyncMember] = []
    removed: list[str] = []
    failures: dict[tuple[str, str], str] = {}
    remote_member_ids: dict[str, str] = {}
    for batch, result in sent:
        members = batch.members
        if isinstance(result, BatchResult):
            outcome = result
        else:
            answered = result.answered if isinstance(result, ConnectorError) else None
            if answered is None:
                continue  # sent again after a restart, or the run fails
            # What the destination answered before the batch failed is recorded too.
            members = [m for m in batch.members if m.key in answered.keys]
            outcome = answered.result
        remote_member_ids.update(outcome.remote_member_ids)
        failed = outcome.failed
        for member in members:
            reason = failed.get(member.key) if failed else None
            if reason is not None:
                failures[(batch.operation, member.key)] = reason
            elif batch.operation == "add":
                added.append(member)
            else:
                removed.append(member.key)

    async def write(conn: AsyncConnection) -> None:
        newly_added, newly_removed = await record.record_round(
            conn,
            run.id,
            run.segment_id,
            run.destination_id,
            added=added,
            remote_member_ids=remote_member_ids,
            removed=removed,
            through=through,
            streamed=streamed,
        )
        execution.stats["added"] += newly_added
        execution.stats["removed"] += newly_removed
        execution.stats["failed_records"] += await runs.record_failures(conn, run.id, failures)
        if through is not None:
            execution.checkpoint.position = through

    await execution.save(write)

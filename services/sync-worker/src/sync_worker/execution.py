"""Carrying out one sync run (or promotion), checkpointed after every batch.

A run resolves the remote segment (remembered id, else name, else created), reconciles the
worker's record with a remote segment that existed before (reading its members), writes its
plan (`planner`), then works through the plan in rounds: each round's batches are sent at
once (the limiter keeps them within the vendor's limits), and as batches come back one
transaction records what the destination now holds, the rejected records and the stats, and
the read position once a whole round is back, under the run's lease. The next round is read,
and sent, while the previous one is being recorded.

A worker killed at any point leaves at most the rounds out (up to `Recorder.ROUNDS_AHEAD`)
past the position; the run's next holder sends them again, which adds and removes
idempotently, and counts nothing twice (the stats count what the record gained and lost).
"""

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segments_shared.bus.outbox import add_event
from segments_shared.db.types import AnyRow
from segments_shared.destinations import CONFIG_MODELS, CommerceConfig, DestinationConfig
from segments_shared.events import SyncCompleted, SyncCompletedEvent
from segments_shared.secrets import SecretBox
from sync_worker import planner, runs
from sync_worker.connectors.base import (
    BatchResult,
    Capabilities,
    Connector,
    ConnectorError,
    RemoteSegment,
    RunContext,
    SyncMember,
)
from sync_worker.connectors.http import RetryPolicy
from sync_worker.connectors.registry import UnsupportedDestination, build_connector
from sync_worker.limiter import VendorLimiter
from sync_worker.planner import Round

log = logging.getLogger(__name__)

SOURCE = "sync-worker"
STAT_NAMES = (
    "planned_add",
    "planned_remove",
    "added",
    "removed",
    "skipped_unreachable",
    "failed_records",
)
# The segment-api's answer (409) to a sync of an inactive segment, for a run requested before.
INACTIVE = "the segment is inactive: activate it before syncing it"
# A promotion waits this long between looks at a production sync still running.
DEFER_SECONDS = 2.0


class Interrupted(Exception):
    """The worker is stopping (or lost its lease): hand the run over at a batch boundary."""


class Deferred(Exception):
    """The run cannot start yet (a promotion's source is being synced): claim it later."""


@dataclass
class Execution:
    engine: AsyncEngine
    run: AnyRow
    worker: str
    lease: float
    should_stop: Callable[[], bool]
    stats: dict[str, int] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)

    async def save(self, extra: Callable[[AsyncConnection], Awaitable[None]] | None = None) -> None:
        """Checkpoint (stats and working state), with `extra`'s writes, in one transaction
        that holds only if the lease is still ours (and raises `runs.RunDeleted` if the run
        was deleted meanwhile)."""
        async with self.engine.begin() as conn:
            await runs.hold_target(conn, self.run)
            if extra is not None:
                await extra(conn)
            await runs.save_progress(
                conn, self.run.id, self.worker, self.lease, self.stats, self.checkpoint
            )

    def check(self) -> None:
        if self.should_stop():
            raise Interrupted(str(self.run.id))


@dataclass(frozen=True)
class Batch:
    operation: Literal["add", "remove"]
    members: Sequence[SyncMember]


SentBatch = tuple[Batch, BatchResult | BaseException]


async def execute_run(
    execution: Execution,
    secret_box: SecretBox | None,
    request_timeout: httpx.Timeout,
    policy: RetryPolicy,
    limiter: VendorLimiter,
) -> None:
    run = execution.run
    execution.stats = {name: int(run.stats.get(name, 0)) for name in STAT_NAMES}
    execution.checkpoint = dict(run.checkpoint)
    async with execution.engine.connect() as conn:
        target = await runs.load_target(conn, run)
        gone = await runs.deleted_with(conn, run) if target is None else None
    if target is None:
        # Claimed as the segment or destination was being deleted: the run went with it.
        raise runs.RunDeleted(run.id, gone or "destination or segment")
    if not target.segment_active:
        # Deactivated after the run was requested (SPEC section 5: an inactive segment
        # cannot be synced); checked again on every claim, so a resumed run stops too.
        await _finish(execution, "failed", INACTIVE)
        return
    if run.attempts > runs.MAX_ATTEMPTS:
        await _finish(execution, "failed", f"gave up after {runs.MAX_ATTEMPTS} attempts")
        return
    try:
        if secret_box is None:
            raise ConnectorError("SEGMENTS_SECRET_KEY is not set: credentials cannot be read")
        secrets = secret_box.decrypt(target.secrets)
        config = CONFIG_MODELS[target.type].model_validate({**target.config, **secrets})
        if run.kind == "promotion":
            config = _promotion_config(config)
        context = RunContext(
            sync_id=str(run.id),
            segment_id=str(run.segment_id),
            segment_name=target.segment_name,
            checkpoint=execution.checkpoint,
        )
        connector = build_connector(
            config,
            context,
            account=target.account_key,
            timeout=request_timeout,
            policy=policy,
            limiter=limiter,
        )
    except (ConnectorError, UnsupportedDestination, ValueError) as exc:
        await _finish(execution, "failed", str(exc))
        return
    try:
        await _sync(execution, connector, target)
    except ConnectorError as exc:
        log.warning("sync run failed", extra={"sync_id": str(run.id), "error": str(exc)})
        await _finish(execution, "failed", str(exc))
    finally:
        await connector.aclose()


def _promotion_config(config: DestinationConfig) -> DestinationConfig:
    """Staging gets an exact copy under production's name, whatever its own export rules."""
    if not isinstance(config, CommerceConfig):
        raise ConnectorError("a promotion goes to a commerce destination")
    return config.model_copy(update={"naming": "match_name", "export_mode": "replace"})


async def _sync(execution: Execution, connector: Connector, target: AnyRow) -> None:
    run = execution.run
    if run.kind == "promotion":
        wanted_name = str(execution.checkpoint.get("remote_name") or "")
        if not wanted_name:
            wanted_name = await _promotion_source_name(execution)
    else:
        wanted_name = connector.remote_name(target.segment_name)
    remote = await _resolve_remote(execution, connector, target, wanted_name)
    if execution.checkpoint.get("reconcile") and not execution.checkpoint.get("reconciled"):
        await _reconcile(execution, connector, remote)
    if not execution.checkpoint.get("planned"):
        await _plan(execution, connector)
    await _send_plan(execution, connector, remote)
    status = "partial" if execution.stats["failed_records"] else "succeeded"
    await _finish(execution, status, None)


async def _promotion_source_name(execution: Execution) -> str:
    """The name production's segment carries, once production is settled: a promotion copies
    the record of its last successful sync, so it waits while production syncs."""
    async with execution.engine.connect() as conn:
        source = await runs.promotion_source(conn, execution.run)
    _check_source(source)
    assert source is not None
    return str(source.remote_name)


def _check_source(source: AnyRow | planner.SourceState | None) -> None:
    if source is None or not (
        source.synced if isinstance(source, planner.SourceState) else source.last_success_run_id
    ):
        raise ConnectorError(
            "the production destination has no successful sync of this segment to promote"
        )
    if source.latest_status in ("queued", "running"):
        raise Deferred("the production destination is syncing this segment")
    if source.latest_status not in ("succeeded", "partial"):
        raise ConnectorError(
            "the production destination's last sync of this segment failed, so what it holds "
            "is not the result of a successful sync: sync it again, then promote"
        )


async def _resolve_remote(
    execution: Execution, connector: Connector, target: AnyRow, wanted_name: str
) -> RemoteSegment:
    run = execution.run
    checkpoint = execution.checkpoint
    fresh = "remote_name" not in checkpoint
    if fresh:
        checkpoint["remote_name"] = wanted_name
        if connector.creates_new_segments:
            # A timestamped name is decided once: after a crash the run finds the segment it
            # created under that name instead of creating another.
            await execution.save()
    remembered = checkpoint.get("remote_id") or (
        None if connector.creates_new_segments else target.remote_id
    )
    remote = await connector.find_or_create_segment(str(checkpoint["remote_name"]), remembered)
    while fresh and connector.creates_new_segments and remote.found_by == "name":
        # Another export took this second's name: names carry seconds, so wait for the next.
        await asyncio.sleep(1.0)
        checkpoint["remote_name"] = connector.remote_name(target.segment_name)
        await execution.save()
        remote = await connector.find_or_create_segment(str(checkpoint["remote_name"]), None)
    if remote.id == checkpoint.get("remote_id"):
        return remote  # resumed: the checkpoint already describes it
    if remote.found_by == "name":
        async with execution.engine.connect() as conn:
            owner = await runs.remote_owner(conn, run, remote.id)
        if owner is not None:
            # Two segments must never mirror into one remote segment: each sync would undo
            # the other's (a renamed segment keeps its remote one until its next sync).
            raise ConnectorError(
                f"the remote segment named {remote.name!r} is where segment {owner!r} syncs "
                "on this destination; sync that segment first (it renames its remote segment "
                "to its own name) or rename one of the two"
            )
    restart = "remote_id" in checkpoint  # the remote segment vanished under a running run
    checkpoint["remote_id"] = remote.id
    checkpoint["reconcile"] = remote.found_by == "name"
    for name_ in ("planned", "streamed", "position", "reconciled"):
        checkpoint.pop(name_, None)

    async def remember(conn: AsyncConnection) -> None:
        await runs.remember_remote(conn, run, remote.id, remote.name)
        if remote.found_by == "created":
            await planner.forget_record(conn, run.segment_id, run.destination_id)
        if restart:
            await planner.drop_plan(conn, run.id)

    await execution.save(remember)
    log.info(
        "remote segment resolved",
        extra={"sync_id": str(run.id), "remote_id": remote.id, "found_by": remote.found_by},
    )
    return remote


async def _reconcile(execution: Execution, connector: Connector, remote: RemoteSegment) -> None:
    """The remote segment existed before we synced into it: the record becomes what it
    holds now (read afresh from the start if a restart interrupted this)."""
    run = execution.run

    async def forget(conn: AsyncConnection) -> None:
        await planner.forget_record(conn, run.segment_id, run.destination_id)

    await execution.save(forget)
    async for keys in connector.read_members(remote):
        execution.check()

        async def record(conn: AsyncConnection, keys: list[str] = keys) -> None:
            await planner.record_remote_keys(
                conn, run.segment_id, run.destination_id, connector.capabilities, keys
            )

        await execution.save(record)
    execution.checkpoint["reconciled"] = True
    await execution.save()


async def _plan(execution: Execution, connector: Connector) -> None:
    run = execution.run
    checkpoint = execution.checkpoint

    async def write(conn: AsyncConnection) -> None:
        await planner.drop_plan(conn, run.id)
        if run.kind == "promotion":
            plan, source = await planner.plan_promotion(
                conn, run.id, run.segment_id, run.source_destination_id, run.destination_id
            )
            if not source.settled:
                _check_source(source)  # raises: the transaction and its plan roll back
        else:
            # Counted on another connection while this one compares the segment and record.
            sizes = asyncio.create_task(_count_sizes(execution))
            try:
                plan = await planner.plan_sync(
                    conn,
                    run.id,
                    run.segment_id,
                    run.destination_id,
                    connector.capabilities,
                    removals=connector.removes_members,
                    sizes=sizes,
                )
            finally:
                if not sizes.done():
                    sizes.cancel()
        execution.stats.update(
            planned_add=plan.planned_add,
            planned_remove=plan.planned_remove,
            skipped_unreachable=plan.skipped_unreachable,
        )
        checkpoint["planned"] = True
        checkpoint["streamed"] = plan.streamed
        checkpoint["position"] = 0

    await execution.save(write)
    log.info("sync run planned", extra={"sync_id": str(run.id), "stats": execution.stats})


async def _count_sizes(execution: Execution) -> AnyRow:
    async with execution.engine.connect() as conn:
        run = execution.run
        return await planner.count_sizes(conn, run.segment_id, run.destination_id)


async def _send_plan(execution: Execution, connector: Connector, remote: RemoteSegment) -> None:
    run = execution.run
    capabilities = connector.capabilities
    round_size = capabilities.concurrency * capabilities.batch_size
    streamed = bool(execution.checkpoint.get("streamed"))

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
        current = await read(int(execution.checkpoint.get("position", 0)))
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

    async def record(conn: AsyncConnection) -> None:
        newly_added, newly_removed = await planner.record_round(
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
            execution.checkpoint["position"] = through

    await execution.save(record)


async def _finish(execution: Execution, status: str, error: str | None) -> None:
    run = execution.run

    async def finish(conn: AsyncConnection) -> None:
        if await runs.finish_run(
            conn, run, execution.worker, status=status, stats=execution.stats, error=error
        ):
            await planner.drop_plan(conn, run.id)
            await add_event(
                conn,
                SyncCompletedEvent(
                    source=SOURCE,
                    subject=str(run.segment_id),
                    data=SyncCompleted(
                        sync_id=run.id,
                        segment_id=run.segment_id,
                        destination_id=run.destination_id,
                        status=status,
                        stats=execution.stats,
                    ),
                ),
            )

    async with execution.engine.begin() as conn:
        await runs.hold_target(conn, run)
        await finish(conn)
    if execution.stats["added"] + execution.stats["removed"] >= planner.LARGE_CHANGE:
        # The record changed a lot: the next plan should not wait for autovacuum's statistics.
        try:
            async with execution.engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await planner.vacuum_record(conn)
        except Exception:
            log.warning("vacuuming the record failed; autovacuum will", exc_info=True)
    log.info(
        "sync run finished",
        extra={"sync_id": str(run.id), "status": status, "stats": execution.stats, "error": error},
    )

"""Carrying out one sync run, checkpointed after every round of batches.

Each round reads up to `concurrency` batches of the plan, sends them at once, then records in
one transaction what the destination now holds, the failures, the stats and the cursor,
under the run's lease. A worker killed at any point leaves at most one round sent but not
recorded; the run's next holder sends it again, which adds and removes idempotently.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.bus.outbox import add_event
from segments_shared.db.types import AnyRow
from segments_shared.destinations import CONFIG_MODELS
from segments_shared.events import SyncCompleted, SyncCompletedEvent
from segments_shared.secrets import SecretBox
from sync_worker import planner, runs
from sync_worker.connectors.base import (
    BatchResult,
    Connector,
    ConnectorError,
    RemoteSegment,
    RunContext,
    SyncMember,
)
from sync_worker.connectors.http import RetryPolicy
from sync_worker.connectors.registry import UnsupportedDestination, build_connector

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


class Interrupted(Exception):
    """The worker is stopping (or lost its lease): hand the run over at a batch boundary."""


@dataclass
class Execution:
    engine: AsyncEngine
    run: AnyRow
    worker: str
    lease: float
    should_stop: Callable[[], bool]
    stats: dict[str, int] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)

    async def save(self, extra: Callable[[Any], Awaitable[None]] | None = None) -> None:
        async with self.engine.begin() as conn:
            if extra is not None:
                await extra(conn)
            await runs.save_progress(
                conn, self.run.id, self.worker, self.lease, self.stats, self.checkpoint
            )

    def check(self) -> None:
        if self.should_stop():
            raise Interrupted(str(self.run.id))


async def execute_run(
    execution: Execution,
    secret_box: SecretBox | None,
    client: httpx.AsyncClient,
    policy: RetryPolicy,
) -> None:
    run = execution.run
    execution.stats = {name: int(run.stats.get(name, 0)) for name in STAT_NAMES}
    execution.checkpoint = dict(run.checkpoint)
    async with execution.engine.connect() as conn:
        target = await runs.load_target(conn, run)
    if target is None:
        return  # the segment or destination was deleted; its runs went with it
    if run.attempts > runs.MAX_ATTEMPTS:
        await _finish(execution, "failed", f"gave up after {runs.MAX_ATTEMPTS} attempts")
        return
    try:
        if secret_box is None:
            raise ConnectorError("SEGMENTS_SECRET_KEY is not set: credentials cannot be read")
        secrets = secret_box.decrypt(target.secrets)
        config = CONFIG_MODELS[target.type].model_validate({**target.config, **secrets})
        context = RunContext(
            sync_id=str(run.id),
            segment_id=str(run.segment_id),
            segment_name=target.segment_name,
            checkpoint=execution.checkpoint,
        )
        connector = build_connector(target.type, config, secrets, context, client, policy)
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


async def _sync(execution: Execution, connector: Connector, target: AnyRow) -> None:
    run = execution.run
    capabilities = connector.capabilities
    remote = await connector.find_or_create_segment(target.segment_name, target.remote_id)

    async def remember(conn: Any) -> None:
        await runs.remember_remote(conn, run, remote.id, remote.name)
        if remote.created:
            await planner.forget_remote(conn, run.segment_id, run.destination_id)

    execution.checkpoint["remote_id"] = remote.id
    await execution.save(remember)

    if target.remote_id is None and not remote.created and "reconciled" not in execution.checkpoint:
        async for keys in connector.read_members(remote):
            execution.check()
            async with execution.engine.begin() as conn:
                await planner.record_remote_keys(conn, run.segment_id, run.destination_id, keys)
        execution.checkpoint["reconciled"] = True
        await execution.save()

    if "planned" not in execution.checkpoint:
        async with execution.engine.connect() as conn:
            plan = await planner.count_plan(conn, run.segment_id, run.destination_id, capabilities)
        execution.stats.update(
            planned_add=plan.planned_add,
            planned_remove=plan.planned_remove,
            skipped_unreachable=plan.skipped_unreachable,
        )
        execution.checkpoint["planned"] = True
        await execution.save()

    await _send_additions(execution, connector, remote)
    await _send_removals(execution, connector, remote)
    status = "partial" if execution.stats["failed_records"] else "succeeded"
    await _finish(execution, status, None)


async def _send_additions(
    execution: Execution, connector: Connector, remote: RemoteSegment
) -> None:
    run = execution.run
    capabilities = connector.capabilities
    after = int(execution.checkpoint.get("add_after", 0))
    while True:
        execution.check()
        batches: list[list[SyncMember]] = []
        async with execution.engine.connect() as conn:
            for _ in range(capabilities.concurrency):
                members, after = await planner.next_additions(
                    conn,
                    run.segment_id,
                    run.destination_id,
                    capabilities,
                    after_customer_id=after,
                    limit=capabilities.batch_size,
                )
                if not members:
                    break
                batches.append(members)
        if not batches:
            return
        results = await _send_round(connector.add_members, remote, batches)
        await execution.save(partial(_record_additions, execution, batches, results, after))
        _raise_first_error(results)


async def _send_removals(execution: Execution, connector: Connector, remote: RemoteSegment) -> None:
    run = execution.run
    capabilities = connector.capabilities
    after = str(execution.checkpoint.get("remove_after", ""))
    while True:
        execution.check()
        batches: list[list[SyncMember]] = []
        async with execution.engine.connect() as conn:
            for _ in range(capabilities.concurrency):
                members = await planner.next_removals(
                    conn,
                    run.segment_id,
                    run.destination_id,
                    capabilities,
                    after_key=after,
                    limit=capabilities.batch_size,
                )
                if not members:
                    break
                batches.append(members)
                after = members[-1].key
        if not batches:
            return
        results = await _send_round(connector.remove_members, remote, batches)
        await execution.save(partial(_record_removals, execution, batches, results, after))
        _raise_first_error(results)


async def _record_additions(
    execution: Execution,
    batches: list[list[SyncMember]],
    results: list[BatchResult | BaseException],
    cursor: int,
    conn: Any,
) -> None:
    run = execution.run
    for members, result in zip(batches, results, strict=True):
        if isinstance(result, BatchResult):
            sent = [m for m in members if m.key not in result.failed]
            await planner.record_added(
                conn, run.segment_id, run.destination_id, sent, result.remote_member_ids
            )
            await runs.record_failures(conn, run.id, "add", result.failed)
            execution.stats["added"] += len(sent)
            execution.stats["failed_records"] += len(result.failed)
    execution.checkpoint["add_after"] = cursor


async def _record_removals(
    execution: Execution,
    batches: list[list[SyncMember]],
    results: list[BatchResult | BaseException],
    cursor: str,
    conn: Any,
) -> None:
    run = execution.run
    for members, result in zip(batches, results, strict=True):
        if isinstance(result, BatchResult):
            removed = [m.key for m in members if m.key not in result.failed]
            await planner.record_removed(conn, run.segment_id, run.destination_id, removed)
            await runs.record_failures(conn, run.id, "remove", result.failed)
            execution.stats["removed"] += len(removed)
            execution.stats["failed_records"] += len(result.failed)
    execution.checkpoint["remove_after"] = cursor


async def _send_round(
    send: Callable[[RemoteSegment, list[SyncMember]], Awaitable[BatchResult]],
    remote: RemoteSegment,
    batches: list[list[SyncMember]],
) -> list[BatchResult | BaseException]:
    return await asyncio.gather(*(send(remote, batch) for batch in batches), return_exceptions=True)


def _raise_first_error(results: list[BatchResult | BaseException]) -> None:
    """After recording what succeeded, surface a batch's failure (it ends or retries the run)."""
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _finish(execution: Execution, status: str, error: str | None) -> None:
    run = execution.run

    async def finish(conn: Any) -> None:
        if await runs.finish_run(
            conn, run, execution.worker, status=status, stats=execution.stats, error=error
        ):
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
        await finish(conn)
    log.info(
        "sync run finished",
        extra={"sync_id": str(run.id), "status": status, "stats": execution.stats, "error": error},
    )

"""The run's remote segment: resolved (remembered id, else name, else created) and, when it
existed before we synced into it, reconciled: the worker's record becomes what it holds."""

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.types import AnyRow
from sync_worker import planner, record, runs
from sync_worker.connectors.base import Connector, ConnectorError, RemoteSegment
from sync_worker.execution.state import Execution

log = logging.getLogger(__name__)


async def resolve_remote(
    execution: Execution, connector: Connector, target: AnyRow, wanted_name: str
) -> RemoteSegment:
    run = execution.run
    checkpoint = execution.checkpoint
    fresh = checkpoint.remote_name is None
    if checkpoint.remote_name is None:
        checkpoint.remote_name = wanted_name
        if connector.creates_new_segments:
            # A timestamped name is decided once: after a crash the run finds the segment it
            # created under that name instead of creating another.
            await execution.save()
    remembered = checkpoint.remote_id or (
        None if connector.creates_new_segments else target.remote_id
    )
    remote = await connector.find_or_create_segment(checkpoint.remote_name, remembered)
    while fresh and connector.creates_new_segments and remote.found_by == "name":
        # Another export took this second's name: names carry seconds, so wait for the next.
        await asyncio.sleep(1.0)
        checkpoint.remote_name = connector.remote_name(target.segment_name)
        await execution.save()
        remote = await connector.find_or_create_segment(checkpoint.remote_name, None)
    if remote.id == checkpoint.remote_id:
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
    restart = checkpoint.remote_id is not None  # the remote segment vanished under a running run
    checkpoint.start_over(remote.id, reconcile=remote.found_by == "name")

    async def remember(conn: AsyncConnection) -> None:
        await runs.remember_remote(conn, run, remote.id, remote.name)
        if remote.found_by == "created":
            await record.forget_record(conn, run.segment_id, run.destination_id)
        if restart:
            await planner.drop_plan(conn, run.id)

    await execution.save(remember)
    log.info(
        "remote segment resolved",
        extra={"sync_id": str(run.id), "remote_id": remote.id, "found_by": remote.found_by},
    )
    return remote


async def reconcile(execution: Execution, connector: Connector, remote: RemoteSegment) -> None:
    """The remote segment existed before we synced into it: the record becomes what it
    holds now (read afresh from the start if a restart interrupted this)."""
    run = execution.run

    async def forget(conn: AsyncConnection) -> None:
        await record.forget_record(conn, run.segment_id, run.destination_id)

    await execution.save(forget)
    async for keys in connector.read_members(remote):
        execution.check()

        async def remember(conn: AsyncConnection, keys: list[str] = keys) -> None:
            await record.record_remote_keys(
                conn, run.segment_id, run.destination_id, connector.capabilities, keys
            )

        await execution.save(remember)
    execution.checkpoint.reconciled = True
    await execution.save()

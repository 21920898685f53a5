"""Writing the run's plan (`planner`) with its counts and the checkpoint, in one transaction."""

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.types import AnyRow
from sync_worker import planner
from sync_worker.connectors.base import Connector
from sync_worker.execution.promotion import check_source
from sync_worker.execution.state import Execution

log = logging.getLogger(__name__)


async def write_plan(execution: Execution, connector: Connector) -> None:
    run = execution.run
    checkpoint = execution.checkpoint

    async def write(conn: AsyncConnection) -> None:
        await planner.drop_plan(conn, run.id)
        if run.kind == "promotion":
            plan, source = await planner.plan_promotion(
                conn, run.id, run.segment_id, run.source_destination_id, run.destination_id
            )
            if not source.settled:
                check_source(source)  # raises: the transaction and its plan roll back
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
        checkpoint.planned = True
        checkpoint.streamed = plan.streamed
        checkpoint.position = 0

    await execution.save(write)
    log.info("sync run planned", extra={"sync_id": str(run.id), "stats": execution.stats})


async def _count_sizes(execution: Execution) -> AnyRow:
    async with execution.engine.connect() as conn:
        run = execution.run
        return await planner.count_sizes(conn, run.segment_id, run.destination_id)

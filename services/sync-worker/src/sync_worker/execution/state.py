"""A run being carried out: its row, its lease, its stats and its checkpoint, saved together
under the lease."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segments_shared.db.types import AnyRow
from segments_shared.jobs.store import Claim
from sync_worker import runs
from sync_worker.execution.checkpoint import Checkpoint

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
    # The run's job as this worker claimed it: every write holds only for this claim.
    job: Claim
    worker: str
    should_stop: Callable[[], bool]
    stats: dict[str, int] = field(default_factory=dict)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)

    async def save(self, extra: Callable[[AsyncConnection], Awaitable[None]] | None = None) -> None:
        """Checkpoint (stats and working state), with `extra`'s writes, in one transaction
        that holds only if the lease is still ours (and raises `runs.RunDeleted` if the run
        was deleted meanwhile)."""
        async with self.engine.begin() as conn:
            await runs.hold_target(conn, self.run)
            if extra is not None:
                await extra(conn)
            await runs.save_progress(
                conn, self.run.id, self.job, self.worker, self.stats, self.checkpoint.dump()
            )

    def check(self) -> None:
        if self.should_stop():
            raise Interrupted(str(self.run.id))

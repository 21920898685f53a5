"""A promotion copies what production's destination holds of a segment, by our record, to
staging, under production's name: only once production's last sync of the segment succeeded,
and not while production syncs it (the run is then deferred)."""

from segments_shared.db.types import AnyRow
from segments_shared.destinations import CommerceConfig, DestinationConfig
from sync_worker import planner, runs
from sync_worker.connectors.base import ConnectorError
from sync_worker.execution.state import Execution

# A promotion waits this long between looks at a production sync still running.
DEFER_SECONDS = 2.0


class Deferred(Exception):
    """The run cannot start yet (a promotion's source is being synced): claim it later."""


def promotion_config(config: DestinationConfig) -> DestinationConfig:
    """Staging gets an exact copy under production's name, whatever its own export rules."""
    if not isinstance(config, CommerceConfig):
        raise ConnectorError("a promotion goes to a commerce destination")
    return config.model_copy(update={"naming": "match_name", "export_mode": "replace"})


async def source_name(execution: Execution) -> str:
    """The name production's segment carries, once production is settled: a promotion copies
    the record of its last successful sync, so it waits while production syncs."""
    async with execution.engine.connect() as conn:
        source = await runs.promotion_source(conn, execution.run)
    check_source(source)
    assert source is not None
    return str(source.remote_name)


def check_source(source: AnyRow | planner.SourceState | None) -> None:
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

"""What a run needs before it sends anything: its segment and destination (still there, the
segment active), attempts left, and a connector built from the destination's configuration
and decrypted credentials."""

from dataclasses import dataclass

import httpx
from pydantic import ValidationError

from segments_shared.db.types import AnyRow
from segments_shared.destinations import CONFIG_MODELS
from segments_shared.netguard import AllowList
from segments_shared.secrets import SecretBox
from sync_worker import runs
from sync_worker.connectors.base import Connector, ConnectorError, RunContext
from sync_worker.connectors.http import RetryPolicy
from sync_worker.connectors.registry import UnsupportedDestination, build_connector
from sync_worker.execution.promotion import promotion_config
from sync_worker.execution.state import Execution
from sync_worker.limiter import VendorLimiter

# The segment-api's answer (409) to a sync of an inactive segment, for a run requested before.
INACTIVE = "the segment is inactive: activate it before syncing it"


@dataclass(frozen=True)
class Ready:
    # The segment, the destination, and what we remember of the remote segment.
    target: AnyRow
    connector: Connector


async def prepare(
    execution: Execution,
    secret_box: SecretBox | None,
    request_timeout: httpx.Timeout,
    policy: RetryPolicy,
    limiter: VendorLimiter,
    allow: AllowList,
) -> Ready | str:
    """The run's target and a connector to it, or why the run fails without sending. Raises
    `runs.RunDeleted` when the run went with its segment or destination."""
    run = execution.run
    async with execution.engine.connect() as conn:
        target = await runs.load_target(conn, run)
        gone = await runs.deleted_with(conn, run) if target is None else None
    if target is None:
        # Claimed as the segment or destination was being deleted: the run went with it.
        raise runs.RunDeleted(run.id, gone or "destination or segment")
    if not target.segment_active:
        # Deactivated after the run was requested (an inactive segment cannot be synced);
        # checked again on every claim, so a resumed run stops too.
        return INACTIVE
    if execution.job.attempts > runs.MAX_ATTEMPTS:
        return f"gave up after {runs.MAX_ATTEMPTS} attempts"
    try:
        if secret_box is None:
            raise ConnectorError("SEGMENTS_SECRET_KEY is not set: credentials cannot be read")
        secrets = secret_box.decrypt(target.secrets)
        config = CONFIG_MODELS[target.type].model_validate({**target.config, **secrets})
        if run.kind == "promotion":
            config = promotion_config(config)
        context = RunContext(
            sync_id=str(run.id),
            segment_id=str(run.segment_id),
            segment_name=target.segment_name,
            # The same object as the checkpoint's: saved with it.
            state=execution.checkpoint.connector,
        )
        connector = build_connector(
            config,
            context,
            account=target.account_key,
            timeout=request_timeout,
            policy=policy,
            limiter=limiter,
            allow=allow,
        )
    except ValidationError as exc:
        return invalid_config(exc)
    except (ConnectorError, UnsupportedDestination, ValueError) as exc:
        return str(exc)
    return Ready(target, connector)


def invalid_config(exc: ValidationError) -> str:
    """Why a stored configuration no longer validates, without the values: pydantic's own
    message quotes each one, credentials included."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
        for error in exc.errors(include_input=False, include_url=False)
    )
    return f"the destination's configuration is invalid ({problems}): correct it and sync again"

"""Carrying out one sync run (or promotion), checkpointed after every batch.

A run checks what it needs (`preconditions`), resolves the remote segment (remembered id,
else name, else created) and reconciles the worker's record with a remote segment that
existed before, reading its members (`remote`); it writes its plan (`plan`), sends it in
rounds and records what comes back (`sending`), and ends with its status and the
`sync.completed` event (`finishing`). A promotion first waits for production's destination to
be settled (`promotion`). Its working state is a `Checkpoint` (`checkpoint`), saved with its
stats under the run's lease (`state`).
"""

import logging

import httpx

from segments_shared.db.types import AnyRow
from segments_shared.netguard import AllowList
from segments_shared.secrets import SecretBox
from sync_worker.connectors.base import AuthenticationFailed, Connector, ConnectorError
from sync_worker.connectors.http import RetryPolicy
from sync_worker.execution.checkpoint import Checkpoint
from sync_worker.execution.finishing import finish
from sync_worker.execution.plan import write_plan
from sync_worker.execution.preconditions import INACTIVE, prepare
from sync_worker.execution.promotion import DEFER_SECONDS, Deferred, source_name
from sync_worker.execution.remote import reconcile, resolve_remote
from sync_worker.execution.sending import send_plan
from sync_worker.execution.state import STAT_NAMES, Execution, Interrupted
from sync_worker.limiter import VendorLimiter

__all__ = ["DEFER_SECONDS", "INACTIVE", "Deferred", "Execution", "Interrupted", "execute_run"]

log = logging.getLogger(__name__)


async def execute_run(
    execution: Execution,
    secret_box: SecretBox | None,
    request_timeout: httpx.Timeout,
    policy: RetryPolicy,
    limiter: VendorLimiter,
    allow: AllowList,
) -> None:
    run = execution.run
    execution.stats = {name: int(run.stats.get(name, 0)) for name in STAT_NAMES}
    execution.checkpoint = Checkpoint.load(run.checkpoint)
    ready = await prepare(execution, secret_box, request_timeout, policy, limiter, allow)
    if isinstance(ready, str):
        await finish(execution, "failed", ready)
        return
    try:
        await _sync(execution, ready.connector, ready.target)
    except ConnectorError as exc:
        log.warning("sync run failed", extra={"sync_id": str(run.id), "error": str(exc)})
        auth_failed = isinstance(exc, AuthenticationFailed)
        await finish(execution, "failed", str(exc), auth_failed=auth_failed)
    finally:
        await ready.connector.aclose()


async def _sync(execution: Execution, connector: Connector, target: AnyRow) -> None:
    checkpoint = execution.checkpoint
    if execution.run.kind == "promotion":
        wanted_name = checkpoint.remote_name or await source_name(execution)
    else:
        wanted_name = connector.remote_name(target.segment_name)
    remote = await resolve_remote(execution, connector, target, wanted_name)
    if checkpoint.reconcile and not checkpoint.reconciled:
        await reconcile(execution, connector, remote)
    if not checkpoint.planned:
        await write_plan(execution, connector)
    await send_plan(execution, connector, remote)
    status = "partial" if execution.stats["failed_records"] else "succeeded"
    await finish(execution, status, None)

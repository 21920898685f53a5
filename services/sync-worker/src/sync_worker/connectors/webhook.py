"""A signed JSON webhook (docs/vendors.md#signed-webhook): batches of at most 1,000 members,
each request signed `t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`, afresh on
every retry."""

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from segments_shared.destinations import WebhookConfig
from sync_worker.connectors.base import (
    BatchResult,
    Capabilities,
    RemoteSegment,
    RunContext,
    SyncMember,
)
from sync_worker.connectors.http import VendorHttp, excerpt

CAPABILITIES = Capabilities(
    batch_size=1000, concurrency=4, member_key="external_id", reachable_only=False
)
SIGNATURE_HEADER = "X-Segments-Signature"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _member(member: SyncMember) -> dict[str, Any]:
    return {
        "external_id": member.external_id,
        "email": member.email,
        "first_name": member.first_name,
        "last_name": member.last_name,
    }


class WebhookConnector:
    capabilities = CAPABILITIES
    creates_new_segments = False
    removes_members = True

    def __init__(
        self, config: WebhookConfig, secret: str, context: RunContext, http: VendorHttp
    ) -> None:
        self.url = str(config.url)
        self.secret = secret
        self.context = context
        self.http = http

    def remote_name(self, segment_name: str) -> str:
        return segment_name

    async def find_or_create_segment(self, name: str, remembered_id: str | None) -> RemoteSegment:
        # The receiver's segment is ours: its id is the segment id, named in every batch, and
        # the worker's record is the only account of what it holds.
        return RemoteSegment(id=self.context.segment_id, name=name)

    async def read_members(self, remote: RemoteSegment) -> AsyncIterator[list[str]]:
        # A webhook cannot be read back.
        return
        yield []

    async def add_members(self, remote: RemoteSegment, members: list[SyncMember]) -> BatchResult:
        return await self._post(remote, added=members, removed=[])

    async def remove_members(self, remote: RemoteSegment, members: list[SyncMember]) -> BatchResult:
        return await self._post(remote, added=[], removed=members)

    async def _post(
        self, remote: RemoteSegment, *, added: list[SyncMember], removed: list[SyncMember]
    ) -> BatchResult:
        # Numbered before the first await, so batches sent at once get distinct numbers.
        # The count is checkpointed with each recorded round, which holds the numbers of
        # every batch sent by then, recorded or not: a round sent again after a restart gets
        # new numbers, and a number sent just before a crash can come again on other
        # members. Receivers apply batches idempotently and never deduplicate by number.
        self.context.state.webhook_batch += 1
        batch = self.context.state.webhook_batch
        body = json.dumps(
            {
                "sync_id": self.context.sync_id,
                "segment_id": self.context.segment_id,
                "segment_name": remote.name,
                "batch": batch,
                "added": [_member(member) for member in added],
                "removed": [_member(member) for member in removed],
            },
            separators=(",", ":"),
        ).encode()

        def signature(raw: bytes) -> dict[str, str]:
            return {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(self.secret, raw, int(time.time())),
            }

        response = await self.http.request(
            "POST", self.url, content=body, sign=signature, describe=f"batch {batch}"
        )
        if response.is_success:
            return BatchResult()
        reason = f"the webhook answered {response.status_code}: {excerpt(response.text)}"
        return BatchResult(failed={member.key: reason for member in added + removed})

    async def aclose(self) -> None:
        await self.http.aclose()

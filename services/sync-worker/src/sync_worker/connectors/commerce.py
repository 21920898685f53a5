"""HCL Commerce admin REST v2 (docs/vendors.md#commerce-hcl-commerce): a segment is a member
group with usage `CustomerSegment` in the configured store; its members are memberships with
`exclude` "0", one call per member, addressed by the store's member id (our customer's
`external_id`).

The export rules of IBM Digital Analytics: with `naming: match_name` the group of the same
name is updated (`export_mode: append` only adds, `replace` leaves exactly the current
members); with `naming: timestamped` every run creates a new group named
"<report_name> - <segment name> - <YYYY-MM-DD> - <HHMMSS>" (UTC)."""

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from segments_shared.destinations import CommerceConfig
from sync_worker.connectors.base import (
    Answered,
    AuthenticationFailed,
    BatchResult,
    Capabilities,
    ConnectorError,
    RemoteSegment,
    SyncMember,
)
from sync_worker.connectors.http import VendorHttp
from sync_worker.connectors.vendor import Recheck, VendorConnector

CAPABILITIES = Capabilities(
    batch_size=100, concurrency=8, member_key="external_id", reachable_only=False
)
USAGE = "CustomerSegment"
PAGE = 1000
EXCLUDED = 'the store excludes this member from the segment explicitly (exclude "1")'


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def run_failure(failures: ExceptionGroup[Exception]) -> Exception:
    """The error a failed task group stands for: a refused credential first, then any other
    connector error; anything else stays the group (unexpected: the run is resumed)."""
    for kind in (AuthenticationFailed, ConnectorError):
        for error in _leaves(failures):
            if isinstance(error, kind):
                return error
    return failures


def timestamped_name(report_name: str, segment_name: str, now: datetime) -> str:
    return f"{report_name} - {segment_name} - {now:%Y-%m-%d} - {now:%H%M%S}"


class CommerceConnector(VendorConnector[CommerceConfig]):
    capabilities = CAPABILITIES
    vendor = "the store"
    segment_noun = "member group"

    def __init__(self, config: CommerceConfig, http: VendorHttp) -> None:
        super().__init__(config, http)
        self.creates_new_segments = config.naming == "timestamped"
        self.removes_members = config.export_mode == "replace"

    @staticmethod
    def error_entry(error: dict[str, Any]) -> str:
        return f"{error.get('errorKey')}: {error.get('errorMessage')}"

    def remote_name(self, segment_name: str) -> str:
        if self.creates_new_segments:
            return timestamped_name(self.config.report_name, segment_name, datetime.now(UTC))
        return segment_name

    def segment_path(self, segment_id: str) -> str:
        return f"/member-groups/{quote(segment_id, safe='')}"

    async def create_segment(self, name: str, recheck: Recheck) -> str:
        store_id = self.config.store_id
        return await self.post_create(
            "/member-groups",
            name,
            recheck,
            params={"storeId": store_id},
            body={
                "name": name,
                "storeId": store_id,
                "usage": [USAGE],
                "description": "Customer segment exported by Segments",
            },
        )

    async def read_members(self, remote: RemoteSegment) -> AsyncIterator[list[str]]:
        offset = 0
        while True:
            response = await self.http.request(
                "GET",
                "/member-group-memberships",
                params={"memberGroupId": remote.id, "offset": offset, "limit": PAGE},
                describe="read the group's memberships",
            )
            self.require(response, "reading the group's memberships")
            body = response.json()
            items = body.get("items", [])
            included = [str(item["memberId"]) for item in items if item.get("exclude") == "0"]
            if included:
                yield included
            offset += PAGE
            if not items or offset >= int(body.get("count", 0)):
                return

    async def add_members(self, remote: RemoteSegment, members: list[SyncMember]) -> BatchResult:
        return await self._each(remote, members, self._add)

    async def remove_members(self, remote: RemoteSegment, members: list[SyncMember]) -> BatchResult:
        return await self._each(remote, members, self._remove)

    async def _each(
        self,
        remote: RemoteSegment,
        members: list[SyncMember],
        call: Callable[[RemoteSegment, SyncMember, BatchResult], Coroutine[Any, Any, None]],
    ) -> BatchResult:
        """One request per member, all at once (the limiter holds them to the vendor's
        concurrency). A request that fails the run (401 or 403, retries exhausted) cancels
        the others and is raised as itself, not inside the task group's ExceptionGroup, so
        that the run fails at once with the vendor's reason; it carries what the store
        answered before."""
        result = BatchResult()
        tasks: dict[str, asyncio.Task[None]] = {}
        try:
            async with asyncio.TaskGroup() as group:
                for member in members:
                    tasks[member.key] = group.create_task(call(remote, member, result))
        except ExceptionGroup as failures:
            error = run_failure(failures)
            if isinstance(error, ConnectorError):
                # The members the store answered before the failure are recorded: the
                # record must hold what the store holds.
                answered = (
                    key
                    for key, task in tasks.items()
                    if task.done() and not task.cancelled() and task.exception() is None
                )
                error.answered = Answered(frozenset(answered), result)
            raise error from failures
        return result

    def _membership(self, remote: RemoteSegment, member_id: str) -> str:
        member = quote(member_id, safe="")
        return f"/member-group-memberships/memberId:{member},memberGroupId:{remote.id}"

    async def _add(self, remote: RemoteSegment, member: SyncMember, result: BatchResult) -> None:
        group_id: Any = int(remote.id) if remote.id.isdigit() else remote.id
        response = await self.http.request(
            "POST",
            "/member-group-memberships",
            json_body={"memberId": member.key, "memberGroupId": group_id, "exclude": "0"},
            describe=f"add member {member.key}",
        )
        if response.status_code in (200, 201):
            return
        if response.status_code == 409:
            # A membership exists already (a round sent again after a restart, or set by
            # hand): it counts if it includes the member.
            existing = await self.http.request(
                "GET", self._membership(remote, member.key), describe="read the membership"
            )
            if existing.status_code == 200 and existing.json().get("exclude") == "0":
                return
            result.failed[member.key] = (
                EXCLUDED if existing.status_code == 200 else self.error_text(existing)
            )
            return
        result.failed[member.key] = self.error_text(response)

    async def _remove(self, remote: RemoteSegment, member: SyncMember, result: BatchResult) -> None:
        response = await self.http.request(
            "DELETE", self._membership(remote, member.key), describe=f"remove member {member.key}"
        )
        if response.status_code in (200, 204, 404):
            return  # 404: not a member any more, which is what we want
        result.failed[member.key] = self.error_text(response)

    async def find_segment(self, name: str) -> str | None:
        response = await self.http.request(
            "GET",
            "/member-groups/by-name-and-usage",
            params={"storeId": self.config.store_id, "usage": USAGE, "memberGroupName": name},
            describe="find the member group by name",
        )
        if response.status_code == 404:
            return None
        self.require(response, "finding the member group by name")
        items = response.json().get("items", [])
        return str(items[0]["id"]) if items else None

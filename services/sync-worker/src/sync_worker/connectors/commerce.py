"""HCL Commerce admin REST v2 (DESTINATIONS.md): a segment is a member group with usage
`CustomerSegment` in the configured store; its members are memberships with `exclude` "0",
one call per member, addressed by the store's member id (our customer's `external_id`).

The export rules of IBM Digital Analytics: with `naming: match_name` the group of the same
name is updated (`export_mode: append` only adds, `replace` leaves exactly the current
members); with `naming: timestamped` every run creates a new group named
"<report_name> - <segment name> - <YYYY-MM-DD> - <HHMMSS>" (UTC)."""

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from segments_shared.destinations import CommerceConfig
from sync_worker.connectors.base import (
    Answered,
    AuthenticationFailed,
    BatchResult,
    Capabilities,
    ConnectorError,
    CreatedMeanwhile,
    RemoteSegment,
    SyncMember,
)
from sync_worker.connectors.http import VendorHttp

CAPABILITIES = Capabilities(
    batch_size=100, concurrency=8, member_key="external_id", reachable_only=False
)
USAGE = "CustomerSegment"
PAGE = 1000
EXCLUDED = 'the store excludes this member from the segment explicitly (exclude "1")'


def error_text(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        messages = "; ".join(
            f"{e.get('errorKey')}: {e.get('errorMessage')}" for e in errors if isinstance(e, dict)
        )
    except (ValueError, AttributeError):
        messages = ""
    return f"HTTP {response.status_code}: {messages or response.text[:200]}"


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


class CommerceConnector:
    capabilities = CAPABILITIES

    def __init__(self, config: CommerceConfig, http: VendorHttp) -> None:
        self.http = http
        self.store_id = config.store_id
        self.report_name = config.report_name
        self.creates_new_segments = config.naming == "timestamped"
        self.removes_members = config.export_mode == "replace"

    def remote_name(self, segment_name: str) -> str:
        if self.creates_new_segments:
            return timestamped_name(self.report_name, segment_name, datetime.now(UTC))
        return segment_name

    async def find_or_create_segment(self, name: str, remembered_id: str | None) -> RemoteSegment:
        if remembered_id is not None:
            path = f"/member-groups/{quote(remembered_id, safe='')}"
            response = await self.http.request("GET", path, describe="read the remembered group")
            if response.status_code == 200:
                if response.json().get("name") != name:
                    renamed = await self.http.request(
                        "PATCH", path, json_body={"name": name}, describe="rename the group"
                    )
                    self._require(renamed, f"renaming member group {remembered_id} to {name!r}")
                return RemoteSegment(remembered_id, name, "remembered")
            if response.status_code != 404:
                self._require(response, "reading the remembered member group")
        found = await self._find(name)
        if found is not None:
            return RemoteSegment(found, name, "name")
        try:
            response = await self.http.request(
                "POST",
                "/member-groups",
                params={"storeId": self.store_id},
                json_body={
                    "name": name,
                    "storeId": self.store_id,
                    "usage": [USAGE],
                    "description": "Customer segment exported by Segments",
                },
                describe="create the member group",
                recheck=lambda: self._find(name),
            )
        except CreatedMeanwhile as created:
            # A timestamped name is this run's own; another is reconciled and checked not to
            # be another segment's, as any group found by name.
            if self.creates_new_segments:
                return RemoteSegment(created.remote_id, name, "created")
            return RemoteSegment(created.remote_id, name, "name")
        if response.status_code in (200, 201):
            return RemoteSegment(str(response.json()["id"]), name, "created")
        found = await self._find(name)  # a create that timed out may have happened
        if found is not None:
            return RemoteSegment(found, name, "name")
        raise ConnectorError(
            f"the store did not create member group {name!r}: {error_text(response)}"
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
            self._require(response, "reading the group's memberships")
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

    async def aclose(self) -> None:
        await self.http.aclose()

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
                EXCLUDED if existing.status_code == 200 else error_text(existing)
            )
            return
        result.failed[member.key] = error_text(response)

    async def _remove(self, remote: RemoteSegment, member: SyncMember, result: BatchResult) -> None:
        response = await self.http.request(
            "DELETE", self._membership(remote, member.key), describe=f"remove member {member.key}"
        )
        if response.status_code in (200, 204, 404):
            return  # 404: not a member any more, which is what we want
        result.failed[member.key] = error_text(response)

    async def _find(self, name: str) -> str | None:
        response = await self.http.request(
            "GET",
            "/member-groups/by-name-and-usage",
            params={"storeId": self.store_id, "usage": USAGE, "memberGroupName": name},
            describe="find the member group by name",
        )
        if response.status_code == 404:
            return None
        self._require(response, "finding the member group by name")
        items = response.json().get("items", [])
        return str(items[0]["id"]) if items else None

    @staticmethod
    def _require(response: httpx.Response, doing: str) -> None:
        if response.status_code != 200:
            raise ConnectorError(f"the store failed {doing}: {error_text(response)}")

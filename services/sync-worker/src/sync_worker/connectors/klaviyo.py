"""Klaviyo (docs/vendors.md#klaviyo, official OpenAPI documents): a segment is a list.
Additions are bulk profile import jobs of at most 10,000 profiles and 5 MB that also put the
profiles on the list (polled to their end; their import errors name the rejected profiles);
removals look the profiles' ids up by email and delete the list relationships, 1,000 at most
per call. Imports carry no subscription, so a profile's consent stays as Klaviyo has it.
Every call counts against the account's burst (10/s) and steady (150/min) windows."""

import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from segments_shared.destinations import KlaviyoConfig
from sync_worker.connectors.base import (
    BatchResult,
    Capabilities,
    RateWindow,
    RemoteSegment,
    SyncMember,
    failed_all,
)
from sync_worker.connectors.polling import poll_until
from sync_worker.connectors.vendor import Recheck, VendorConnector

CAPABILITIES = Capabilities(
    batch_size=10_000,
    remove_batch_size=1000,
    concurrency=3,
    rate_windows=(RateWindow(10, 1.0), RateWindow(150, 60.0)),
)
# Klaviyo's limit per bulk import job (5 MB, counted here in decimal bytes to be safe), and
# room for the job's document around the profiles.
MAX_IMPORT_BYTES = 5_000_000
IMPORT_ENVELOPE_BYTES = 2_000
JSON_API = "application/vnd.api+json"
LOOKUP_PAGE = 100
FINISHED = ("complete", "cancelled", "failed")
PROFILE_POINTER = re.compile(r"/data/attributes/profiles/data/(\d+)")


def quoted(value: str) -> str:
    """A string literal of Klaviyo's filter syntax."""
    return json.dumps(value, ensure_ascii=False)


def encoded_size(value: Any) -> int:
    """Bytes of `value` as `VendorHttp` encodes a JSON body."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def import_parts(members: list[SyncMember]) -> list[list[SyncMember]]:
    """A batch split into import jobs of at most `batch_size` profiles and
    `MAX_IMPORT_BYTES` encoded (long names and addresses reach 5 MB before 10,000)."""
    parts: list[list[SyncMember]] = []
    part: list[SyncMember] = []
    size = IMPORT_ENVELOPE_BYTES
    for member in members:
        each = encoded_size(profile(member)) + 1  # and its comma
        if part and (len(part) == CAPABILITIES.batch_size or size + each > MAX_IMPORT_BYTES):
            parts.append(part)
            part, size = [], IMPORT_ENVELOPE_BYTES
        part.append(member)
        size += each
    if part:
        parts.append(part)
    return parts


def profile(member: SyncMember) -> dict[str, Any]:
    attributes: dict[str, Any] = {"email": member.key}
    if member.first_name:
        attributes["first_name"] = member.first_name
    if member.last_name:
        attributes["last_name"] = member.last_name
    return {"type": "profile", "attributes": attributes}


class KlaviyoConnector(VendorConnector[KlaviyoConfig]):
    capabilities = CAPABILITIES
    vendor = "Klaviyo"
    segment_noun = "list"

    @staticmethod
    def error_entry(error: dict[str, Any]) -> str:
        return str(error.get("detail") or error.get("title"))

    def segment_path(self, segment_id: str) -> str:
        return f"/lists/{quote(segment_id, safe='')}"

    def name_in(self, segment: Any) -> str:
        return str(segment["data"]["attributes"].get("name") or "")

    def rename_body(self, segment_id: str, name: str) -> Any:
        return {"data": {"type": "list", "id": segment_id, "attributes": {"name": name}}}

    async def create_segment(self, name: str, recheck: Recheck) -> str:
        response = await self.http.request(
            "POST",
            "/lists",
            json_body={"data": {"type": "list", "attributes": {"name": name}}},
            describe="create the list",
            recheck=recheck,
        )
        # Not CreateRefused: a refused create fails the run without another look.
        self.require(response, f"creating the list {name!r}", (201,))
        return str(response.json()["data"]["id"])

    async def read_members(self, remote: RemoteSegment) -> AsyncIterator[list[str]]:
        path: str | None = f"{self.segment_path(remote.id)}/profiles"
        params: dict[str, str | int] | None = {"page[size]": LOOKUP_PAGE}
        while path is not None:
            response = await self.http.request(
                "GET", path, params=params, describe="read the list's profiles"
            )
            self.require(response, "reading the list's profiles")
            body = response.json()
            emails = [
                str(item["attributes"]["email"]).lower()
                for item in body.get("data", [])
                if (item.get("attributes") or {}).get("email")
            ]
            if emails:
                yield emails
            path, params = (body.get("links") or {}).get("next"), None

    async def add_members(self, remote: RemoteSegment, members: list[SyncMember]) -> BatchResult:
        result = BatchResult()
        for part in import_parts(members):
            result.failed.update(await self._import(remote, part))
        return result

    async def _import(self, remote: RemoteSegment, members: list[SyncMember]) -> dict[str, str]:
        """One bulk import job; the members it failed, with Klaviyo's reasons."""
        response = await self.http.request(
            "POST",
            "/profile-bulk-import-jobs",
            json_body={
                "data": {
                    "type": "profile-bulk-import-job",
                    "attributes": {"profiles": {"data": [profile(m) for m in members]}},
                    "relationships": {"lists": {"data": [{"type": "list", "id": remote.id}]}},
                }
            },
            describe=f"import {len(members)} profiles",
        )
        self.require_segment(response, remote)
        if response.status_code != 202:
            return failed_all(members, self.error_text(response)).failed
        job_id = response.json()["data"]["id"]
        job = await self._finish_job(job_id)
        status = job["attributes"].get("status")
        if status != "complete":
            return failed_all(members, f"Klaviyo import job {job_id} ended {status}").failed
        failed_count = int(job["attributes"].get("failed_count") or 0)
        if not failed_count:
            return {}
        failed, unattributed = await self._import_errors(job_id, members)
        if unattributed or len(failed) < failed_count:
            # Some failures name no profile of ours: which members the job left out is
            # unknown, so none of the others counts as added (the next sync sends them
            # again, which is harmless; recording someone as held who is not is not).
            reason = (
                f"Klaviyo import job {job_id} failed {failed_count} profile(s) and did not "
                "name each one"
            )
            failed.update({m.key: reason for m in members if m.key not in failed})
        return failed

    async def remove_members(self, remote: RemoteSegment, members: list[SyncMember]) -> BatchResult:
        ids: list[str] = []
        for start in range(0, len(members), LOOKUP_PAGE):
            ids += await self._profile_ids([m.key for m in members[start : start + LOOKUP_PAGE]])
        if not ids:
            return BatchResult()  # no such profiles: nothing on the list to remove
        response = await self.http.request(
            "DELETE",
            f"{self.segment_path(remote.id)}/relationships/profiles",
            json_body={"data": [{"type": "profile", "id": each} for each in ids]},
            describe=f"remove {len(ids)} profiles from the list",
        )
        self.require_segment(response, remote)
        if response.status_code != 204:
            return failed_all(members, self.error_text(response))
        return BatchResult()

    async def _profile_ids(self, emails: list[str]) -> list[str]:
        values = ",".join(quoted(email) for email in emails)
        response = await self.http.request(
            "GET",
            "/profiles",
            params={"filter": f"any(email,[{values}])", "page[size]": LOOKUP_PAGE},
            describe="look profiles up by email",
        )
        self.require(response, "looking profiles up by email")
        return [str(item["id"]) for item in response.json().get("data", [])]

    async def _finish_job(self, job_id: str) -> dict[str, Any]:
        async def status() -> dict[str, Any]:
            response = await self.http.request(
                "GET",
                f"/profile-bulk-import-jobs/{quote(job_id, safe='')}",
                describe="poll the import job",
            )
            self.require(response, f"polling import job {job_id}")
            data: dict[str, Any] = response.json()["data"]
            return data

        return await poll_until(
            status,
            lambda job: job["attributes"].get("status") in FINISHED,
            describe=f"import job {job_id}",
            first_wait=0.2,
        )

    async def _import_errors(
        self, job_id: str, members: list[SyncMember]
    ) -> tuple[dict[str, str], int]:
        """The members the job's errors name, with the reasons, and how many errors named
        none of them."""
        failed: dict[str, str] = {}
        unattributed = 0
        keys = {member.key for member in members}
        path: str | None = f"/profile-bulk-import-jobs/{quote(job_id, safe='')}/import-errors"
        params: dict[str, str | int] | None = {"page[size]": 100}
        while path is not None:
            response = await self.http.request(
                "GET", path, params=params, describe="read the import errors"
            )
            self.require(response, f"reading the errors of import job {job_id}")
            body = response.json()
            for error in body.get("data", []):
                attributes = error.get("attributes") or {}
                key = self._rejected_key(attributes, members)
                if key in keys:
                    failed[key] = str(attributes.get("detail") or attributes.get("title"))
                else:
                    unattributed += 1
            path, params = (body.get("links") or {}).get("next"), None
        return failed, unattributed

    @staticmethod
    def _rejected_key(attributes: dict[str, Any], members: list[SyncMember]) -> str | None:
        payload = attributes.get("original_payload") or {}
        email = (payload.get("attributes") or {}).get("email")
        if isinstance(email, str) and email:
            return email.lower()
        match = PROFILE_POINTER.fullmatch(str((attributes.get("source") or {}).get("pointer")))
        if match and int(match.group(1)) < len(members):
            return members[int(match.group(1))].key
        return None

    async def find_segment(self, name: str) -> str | None:
        response = await self.http.request(
            "GET",
            "/lists",
            params={"filter": f"equals(name,{quoted(name)})"},
            describe="find the list by name",
        )
        self.require(response, "finding the list by name")
        lists = response.json().get("data", [])
        return str(lists[0]["id"]) if lists else None

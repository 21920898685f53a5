"""SendGrid Marketing Campaigns (DESTINATIONS.md, official OpenAPI documents): a segment is a
contact list. Additions upsert contacts onto the list (an asynchronous import job, polled to
its end, whose errors name the rejected emails); removals look the contacts' ids up by email
and delete them from the list (another job). Upserts never carry a subscription status.
SendGrid's rate-limit headers and its reset time on a 429 are honoured by the shared policy."""

import gzip
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, quote, urlparse

import httpx

from segments_shared.destinations import SendgridConfig
from sync_worker.connectors.base import (
    BatchResult,
    Capabilities,
    ConnectorError,
    CreatedMeanwhile,
    RateWindow,
    RemoteSegment,
    SyncMember,
    failed_all,
)
from sync_worker.connectors.http import VendorHttp
from sync_worker.connectors.polling import poll_until

CAPABILITIES = Capabilities(
    batch_size=5000,
    remove_batch_size=100,
    concurrency=4,
    rate_windows=(RateWindow(600, 60.0),),
)
SEARCH_LIMIT = 100
MAX_NAME = 100
NAME_FIELDS = (("first_name", 50), ("last_name", 50))
FINISHED = ("completed", "errored", "failed")
CONTACT_FIELD = re.compile(r"contacts\[(\d+)\]")


def error_text(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        messages = "; ".join(str(error.get("message")) for error in errors if error)
    except (ValueError, AttributeError):
        messages = ""
    return f"HTTP {response.status_code}: {messages or response.text[:200]}"


def contact(member: SyncMember) -> dict[str, Any]:
    values: dict[str, Any] = {"email": member.key}
    for name, longest in NAME_FIELDS:
        value = getattr(member, name)
        if value:
            values[name] = value[:longest]
    return values


def rejected_contacts(response: httpx.Response) -> set[int]:
    """Indexes of contacts a 400 names (`contacts[3].email`): the rest can go again."""
    try:
        errors = response.json().get("errors") or []
    except (ValueError, AttributeError):
        return set()
    found = set()
    for error in errors:
        match = CONTACT_FIELD.match(str((error or {}).get("field") or ""))
        if match:
            found.add(int(match.group(1)))
    return found


class SendGridConnector:
    capabilities = CAPABILITIES
    creates_new_segments = False
    removes_members = True

    def __init__(self, config: SendgridConfig, http: VendorHttp) -> None:
        self.http = http

    def remote_name(self, segment_name: str) -> str:
        return segment_name[:MAX_NAME]

    async def find_or_create_segment(self, name: str, remembered_id: str | None) -> RemoteSegment:
        if remembered_id is not None:
            path = f"/marketing/lists/{quote(remembered_id, safe='')}"
            response = await self.http.request("GET", path, describe="read the remembered list")
            if response.status_code == 200:
                if response.json().get("name") != name:
                    renamed = await self.http.request(
                        "PATCH", path, json_body={"name": name}, describe="rename the list"
                    )
                    self._require(renamed, f"renaming list {remembered_id} to {name!r}")
                return RemoteSegment(remembered_id, name, "remembered")
            if response.status_code != 404:
                self._require(response, "reading the remembered list")
        found = await self._find(name)
        if found is not None:
            return RemoteSegment(found, name, "name")
        try:
            response = await self.http.request(
                "POST",
                "/marketing/lists",
                json_body={"name": name},
                describe="create the list",
                recheck=lambda: self._find(name),
            )
        except CreatedMeanwhile as created:
            # Found by name: reconciled, and checked not to be another segment's.
            return RemoteSegment(created.remote_id, name, "name")
        if response.status_code in (200, 201):
            return RemoteSegment(str(response.json()["id"]), name, "created")
        found = await self._find(name)  # a create that timed out may have happened
        if found is not None:
            return RemoteSegment(found, name, "name")
        raise ConnectorError(f"SendGrid did not create the list {name!r}: {error_text(response)}")

    async def read_members(self, remote: RemoteSegment) -> AsyncIterator[list[str]]:
        """Export the list (JSON lines) and read the emails from the export's files."""
        response = await self.http.request(
            "POST",
            "/marketing/contacts/exports",
            json_body={"list_ids": [remote.id], "file_type": "json"},
            describe="export the list",
        )
        self._require(response, "exporting the list", (202,))
        export_id = response.json()["id"]

        async def status() -> dict[str, Any]:
            polled = await self.http.request(
                "GET",
                f"/marketing/contacts/exports/{quote(export_id, safe='')}",
                describe="poll the export",
            )
            self._require(polled, "polling the export")
            body: dict[str, Any] = polled.json()
            return body

        export = await poll_until(
            status, lambda body: body.get("status") in ("ready", "failure"), describe="the export"
        )
        if export.get("status") != "ready":
            raise ConnectorError(f"SendGrid could not export list {remote.id}: {export}")
        for url in export.get("urls", []):
            download = await self.http.request("GET", url, describe="download the export")
            self._require(download, "downloading the export")
            raw = download.content
            if raw[:2] == b"\x1f\x8b":  # SendGrid's files are gzipped
                raw = gzip.decompress(raw)
            emails = [
                str(json.loads(line)["email"]).lower()
                for line in raw.decode().splitlines()
                if line.strip()
            ]
            for start in range(0, len(emails), 1000):
                yield emails[start : start + 1000]

    async def add_members(self, remote: RemoteSegment, members: list[SyncMember]) -> BatchResult:
        failed: dict[str, str] = {}
        response = await self._upsert(remote, members)
        if response.status_code == 400 and rejected_contacts(response):
            # One bad contact fails the whole call: drop those SendGrid named, send the rest.
            named = rejected_contacts(response)
            failed = {members[i].key: error_text(response) for i in named if i < len(members)}
            members = [m for i, m in enumerate(members) if i not in named]
            if not members:
                return BatchResult(failed=failed)
            response = await self._upsert(remote, members)
        if response.status_code == 404:
            raise ConnectorError(f"SendGrid list {remote.id} no longer exists")
        if response.status_code != 202:
            return BatchResult(
                failed={**failed, **failed_all(members, error_text(response)).failed}
            )
        job = await self._finish_job(response.json()["job_id"], "import")
        failed.update(await self._job_errors(job, members))
        return BatchResult(failed=failed)

    async def remove_members(self, remote: RemoteSegment, members: list[SyncMember]) -> BatchResult:
        ids: dict[str, str] = {}
        for start in range(0, len(members), SEARCH_LIMIT):
            ids.update(
                await self._contact_ids([m.key for m in members[start : start + SEARCH_LIMIT]])
            )
        if not ids:
            return BatchResult()  # none of them is a contact any more: nothing to remove
        response = await self.http.request(
            "DELETE",
            f"/marketing/lists/{quote(remote.id, safe='')}/contacts",
            params={"contact_ids": ",".join(ids.values())},
            describe=f"remove {len(ids)} contacts from the list",
        )
        if response.status_code == 404 and "contact_ids" not in response.text:
            raise ConnectorError(f"SendGrid list {remote.id} no longer exists")
        if response.status_code != 202:
            return failed_all([m for m in members if m.key in ids], error_text(response))
        job = await self._finish_job(response.json()["job_id"], "removal")
        return BatchResult(failed=await self._job_errors(job, members))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _upsert(self, remote: RemoteSegment, members: list[SyncMember]) -> httpx.Response:
        return await self.http.request(
            "PUT",
            "/marketing/contacts",
            json_body={"list_ids": [remote.id], "contacts": [contact(m) for m in members]},
            describe=f"upsert {len(members)} contacts",
        )

    async def _contact_ids(self, emails: list[str]) -> dict[str, str]:
        response = await self.http.request(
            "POST",
            "/marketing/contacts/search/emails",
            json_body={"emails": emails},
            describe="look contacts up by email",
        )
        if response.status_code == 404:
            return {}  # none of them exists
        self._require(response, "looking contacts up by email")
        found: dict[str, str] = {}
        for email, entry in (response.json().get("result") or {}).items():
            contact_id = ((entry or {}).get("contact") or {}).get("id")
            if contact_id:
                found[email.lower()] = contact_id
        return found

    async def _finish_job(self, job_id: str, what: str) -> dict[str, Any]:
        async def status() -> dict[str, Any]:
            response = await self.http.request(
                "GET",
                f"/marketing/contacts/imports/{quote(job_id, safe='')}",
                describe=f"poll the {what} job",
            )
            self._require(response, f"polling {what} job {job_id}")
            body: dict[str, Any] = response.json()
            return body

        return await poll_until(
            status, lambda job: job.get("status") in FINISHED, describe=f"{what} job {job_id}"
        )

    async def _job_errors(self, job: dict[str, Any], members: list[SyncMember]) -> dict[str, str]:
        if job.get("status") == "completed":
            return {}
        url = (job.get("results") or {}).get("errors_url")
        failed: dict[str, str] = {}
        if url:
            response = await self.http.request("GET", url, describe="read the job's errors")
            if response.status_code == 200:
                for error in response.json().get("errors", []):
                    email = str(error.get("email") or "").lower()
                    if email:
                        failed[email] = str(error.get("message") or "rejected")
        if not failed:
            failed = failed_all(members, f"SendGrid job {job.get('id')} {job.get('status')}").failed
        return failed

    async def _find(self, name: str) -> str | None:
        token: str | None = None
        while True:
            params: dict[str, str | int] = {"page_size": 1000}
            if token:
                params["page_token"] = token
            response = await self.http.request(
                "GET", "/marketing/lists", params=params, describe="list the lists"
            )
            self._require(response, "listing the lists")
            body = response.json()
            for entry in body.get("result", []):
                if entry.get("name") == name:
                    return str(entry["id"])
            following = (body.get("_metadata") or {}).get("next")
            token = (
                parse_qs(urlparse(following).query).get("page_token", [None])[0]
                if following
                else None
            )
            if not token:
                return None

    @staticmethod
    def _require(response: httpx.Response, doing: str, ok: tuple[int, ...] = (200,)) -> None:
        if response.status_code not in ok:
            raise ConnectorError(f"SendGrid failed {doing}: {error_text(response)}")

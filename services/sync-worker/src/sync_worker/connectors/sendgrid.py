"""SendGrid Marketing Campaigns (docs/vendors.md#sendgrid, official OpenAPI documents): a
segment is a contact list. Additions upsert contacts onto the list (an asynchronous import
job, polled to its end, whose errors name the rejected emails); removals look the contacts'
ids up by email and delete them from the list (another job). Upserts never carry a
subscription status. SendGrid's rate-limit headers and its reset time on a 429 are honoured
by the shared policy."""

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
    RateWindow,
    RemoteSegment,
    SyncMember,
    failed_all,
)
from sync_worker.connectors.polling import poll_until
from sync_worker.connectors.vendor import Recheck, VendorConnector

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


class SendGridConnector(VendorConnector[SendgridConfig]):
    capabilities = CAPABILITIES
    vendor = "SendGrid"
    segment_noun = "list"
    max_name = MAX_NAME

    @staticmethod
    def error_entry(error: dict[str, Any]) -> str:
        return str(error.get("message"))

    def segment_path(self, segment_id: str) -> str:
        return f"/marketing/lists/{quote(segment_id, safe='')}"

    async def create_segment(self, name: str, recheck: Recheck) -> str:
        return await self.post_create("/marketing/lists", name, recheck, body={"name": name})

    async def read_members(self, remote: RemoteSegment) -> AsyncIterator[list[str]]:
        """Export the list (JSON lines) and read the emails from the export's files."""
        response = await self.http.request(
            "POST",
            "/marketing/contacts/exports",
            json_body={"list_ids": [remote.id], "file_type": "json"},
            describe="export the list",
        )
        self.require(response, "exporting the list", (202,))
        export_id = response.json()["id"]

        async def status() -> dict[str, Any]:
            polled = await self.http.request(
                "GET",
                f"/marketing/contacts/exports/{quote(export_id, safe='')}",
                describe="poll the export",
            )
            self.require(polled, "polling the export")
            body: dict[str, Any] = polled.json()
            return body

        export = await poll_until(
            status, lambda body: body.get("status") in ("ready", "failure"), describe="the export"
        )
        if export.get("status") != "ready":
            raise ConnectorError(f"SendGrid could not export list {remote.id}: {export}")
        for url in export.get("urls", []):
            download = await self.http.request("GET", url, describe="download the export")
            self.require(download, "downloading the export")
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
            failed = {members[i].key: self.error_text(response) for i in named if i < len(members)}
            members = [m for i, m in enumerate(members) if i not in named]
            if not members:
                return BatchResult(failed=failed)
            response = await self._upsert(remote, members)
        self.require_segment(response, remote)
        if response.status_code != 202:
            return BatchResult(
                failed={**failed, **failed_all(members, self.error_text(response)).failed}
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
            f"{self.segment_path(remote.id)}/contacts",
            params={"contact_ids": ",".join(ids.values())},
            describe=f"remove {len(ids)} contacts from the list",
        )
        if "contact_ids" not in response.text:  # a 404 naming them: the contacts are gone
            self.require_segment(response, remote)
        if response.status_code != 202:
            return failed_all([m for m in members if m.key in ids], self.error_text(response))
        job = await self._finish_job(response.json()["job_id"], "removal")
        return BatchResult(failed=await self._job_errors(job, members))

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
        self.require(response, "looking contacts up by email")
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
            self.require(response, f"polling {what} job {job_id}")
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

    async def find_segment(self, name: str) -> str | None:
        token: str | None = None
        while True:
            params: dict[str, str | int] = {"page_size": 1000}
            if token:
                params["page_token"] = token
            response = await self.http.request(
                "GET", "/marketing/lists", params=params, describe="list the lists"
            )
            self.require(response, "listing the lists")
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

"""Mailchimp Marketing API 3.0 (docs/vendors.md#mailchimp): a segment is a static segment
(tag) of the configured audience. Members join the audience first (batch subscribe with
`status_if_new`, never `status`: an existing contact's subscription stays as Mailchimp has
it), then the static segment, at most 500 per array and 10 connections per API key."""

import re
from collections.abc import AsyncIterator
from json.encoder import encode_basestring as quote_json
from urllib.parse import quote

import httpx

from segments_shared.destinations import MailchimpConfig
from sync_worker.connectors.base import (
    BatchResult,
    Capabilities,
    ConnectorError,
    RemoteSegment,
    SyncMember,
    failed_all,
)
from sync_worker.connectors.http import VendorHttp, answer_text
from sync_worker.connectors.vendor import Recheck, VendorConnector

CAPABILITIES = Capabilities(batch_size=500, concurrency=10)
PAGE = 1000
MAX_NAME = 100
NOT_ON_AUDIENCE = "not a member of this audience"
# Answers list every member they touched (hundreds of kilobytes): when they report no error,
# there is nothing to read in them.
NO_ERRORS = re.compile(rb'"error_count"\s*:\s*0\s*[,}]')


def audience_member(member: SyncMember) -> str:
    """One member of a batch subscribe, as JSON text. Written out by hand: this runs once per
    member sent, and building a dict per member only to encode it costs twice as much."""
    merge_fields = []
    if member.first_name:
        merge_fields.append('"FNAME":' + quote_json(member.first_name))
    if member.last_name:
        merge_fields.append('"LNAME":' + quote_json(member.last_name))
    # Only reachable (subscribed) members reach an ESP, so a new contact is subscribed.
    return (
        '{"email_address":' + quote_json(member.key) + ',"status_if_new":"subscribed",'
        '"merge_fields":{' + ",".join(merge_fields) + "}}"
    )


def batch_subscribe(members: list[SyncMember]) -> bytes:
    body = ",".join(audience_member(member) for member in members)
    return ('{"members":[' + body + '],"update_existing":true}').encode()


class MailchimpConnector(VendorConnector[MailchimpConfig]):
    capabilities = CAPABILITIES
    vendor = "Mailchimp"
    segment_noun = "static segment"
    max_name = MAX_NAME

    def __init__(self, config: MailchimpConfig, http: VendorHttp) -> None:
        super().__init__(config, http)
        self.audience = f"/lists/{quote(config.list_id, safe='')}"

    def error_text(self, response: httpx.Response) -> str:
        """Mailchimp answers problem details: `detail` says what is wrong."""
        try:
            body = response.json()
        except ValueError:
            return answer_text(response)
        detail = body.get("detail") if isinstance(body, dict) else None
        return answer_text(response, str(detail or ""))

    def segment_path(self, segment_id: str) -> str:
        return f"{self.audience}/segments/{quote(segment_id, safe='')}"

    async def create_segment(self, name: str, recheck: Recheck) -> str:
        body = {"name": name, "static_segment": []}
        path = f"{self.audience}/segments"
        return await self.post_create(path, name, recheck, body=body, ok=(200,))

    async def read_members(self, remote: RemoteSegment) -> AsyncIterator[list[str]]:
        offset = 0
        while True:
            response = await self.http.request(
                "GET",
                f"{self.segment_path(remote.id)}/members",
                params={"count": PAGE, "offset": offset},
                describe="read the segment's members",
            )
            self.require(response, "reading the segment's members")
            body = response.json()
            emails = [member["email_address"].lower() for member in body.get("members", [])]
            if emails:
                yield emails
            offset += PAGE
            if not emails or offset >= int(body.get("total_items", 0)):
                return

    async def add_members(self, remote: RemoteSegment, members: list[SyncMember]) -> BatchResult:
        response = await self.http.request(
            "POST",
            self.audience,
            json_text=batch_subscribe(members),
            describe=f"add {len(members)} contacts to the audience",
        )
        self._require_audience(response)
        if response.status_code != 200:
            return failed_all(members, self.error_text(response))
        failed = {}
        if not NO_ERRORS.search(response.content):
            failed = {
                error["email_address"].lower(): f"{error.get('error_code', 'ERROR')}: "
                f"{error['error']}"
                for error in response.json().get("errors", [])
            }
        joined = [member.key for member in members if member.key not in failed]
        if joined:
            failed.update(await self._change(remote, "members_to_add", joined))
        return BatchResult(failed=failed)

    async def remove_members(self, remote: RemoteSegment, members: list[SyncMember]) -> BatchResult:
        failed = await self._change(remote, "members_to_remove", [member.key for member in members])
        # Someone no longer on the audience is in no segment of it: nothing left to remove.
        return BatchResult(
            failed={key: reason for key, reason in failed.items() if NOT_ON_AUDIENCE not in reason}
        )

    def _require_audience(self, response: httpx.Response) -> None:
        if response.status_code == 404:
            raise ConnectorError(f"Mailchimp audience {self.config.list_id} does not exist")

    async def _change(self, remote: RemoteSegment, field: str, emails: list[str]) -> dict[str, str]:
        response = await self.http.request(
            "POST",
            self.segment_path(remote.id),
            json_body={field: emails},
            describe=f"{field} ({len(emails)})",
        )
        self.require_segment(response, remote)
        if response.status_code != 200:
            reason = self.error_text(response)
            return {email: reason for email in emails}
        failed: dict[str, str] = {}
        if NO_ERRORS.search(response.content):
            return failed
        for error in response.json().get("errors", []):
            for email in error.get("email_addresses", []):
                failed[email.lower()] = error.get("error", "rejected")
        return failed

    async def find_segment(self, name: str) -> str | None:
        offset = 0
        while True:
            response = await self.http.request(
                "GET",
                f"{self.audience}/segments",
                params={"type": "static", "count": PAGE, "offset": offset},
                describe="list the static segments",
            )
            self._require_audience(response)
            self.require(response, "listing the static segments")
            body = response.json()
            for segment in body.get("segments", []):
                if segment.get("name") == name:
                    return str(segment["id"])
            offset += PAGE
            if offset >= int(body.get("total_items", 0)):
                return None

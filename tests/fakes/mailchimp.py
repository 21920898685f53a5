"""Fake Mailchimp Marketing API 3.0: audience members, batch subscribe and static segments.

Base URL `http://host:port/3.0`; HTTP Basic auth with any user name and the API key as the
password. Members must be on the audience (list) before a static segment can hold them; a
segment holds lower-cased email addresses. At most `max_concurrent` (10) requests per API key
are handled at once; the next one gets 429 without `Retry-After`, as Mailchimp answers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tests.fakes.app import Admission, Call, Endpoint, Vendor, build_app, json_response, no_content
from tests.fakes.state import FakeState

DEFAULT_API_KEY = "fake-mailchimp-key-us1"
MAX_ITEMS = 500
MAX_PAGE = 1000
STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional")
ERROR_TYPE = "https://mailchimp.com/developer/marketing/docs/errors/"
PROBLEM_JSON = "application/problem+json"
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
NOT_ON_LIST = "Email address is not a member of this audience"
TITLES = {
    400: "Invalid Resource",
    401: "API Key Invalid",
    403: "Forbidden",
    404: "Resource Not Found",
    405: "Method Not Allowed",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def subscriber_hash(email: str) -> str:
    """Mailchimp's member id: the MD5 of the lower-cased email."""
    return hashlib.md5(email.lower().encode()).hexdigest()


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(slots=True)
class Member:
    email_address: str
    status: str
    merge_fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Segment:
    """A static segment (tag). `members` holds lower-cased emails of audience members."""

    id: int
    name: str
    list_id: str
    members: set[str] = field(default_factory=set)
    created_at: str = field(default_factory=now_text)
    updated_at: str = field(default_factory=now_text)
    _order: list[str] | None = field(default=None, init=False, repr=False, compare=False)

    def changed(self) -> None:
        self.updated_at = now_text()
        self._order = None

    def page(self, offset: int, count: int) -> list[str]:
        # One snapshot per change: paging a million members costs O(n) overall, not per page.
        if self._order is None or len(self._order) != len(self.members):
            self._order = list(self.members)
        return self._order[offset : offset + count]


@dataclass
class MailingList:
    """An audience. `members` is keyed by subscriber hash."""

    id: str
    name: str
    members: dict[str, Member] = field(default_factory=dict)
    segments: dict[int, Segment] = field(default_factory=dict)

    def add_member(
        self,
        email: str,
        status: str = "subscribed",
        merge_fields: dict[str, Any] | None = None,
    ) -> Member:
        """Put someone on the audience directly, as if they had joined at Mailchimp."""
        member = Member(email, status, dict(merge_fields or {}))
        self.members[subscriber_hash(email)] = member
        return member

    def member(self, email: str) -> Member | None:
        return self.members.get(subscriber_hash(email))

    def segment_named(self, name: str) -> Segment | None:
        return next((each for each in self.segments.values() if each.name == name), None)


@dataclass
class MailchimpState(FakeState):
    api_key: str = DEFAULT_API_KEY
    lists: dict[str, MailingList] = field(default_factory=dict)
    max_concurrent: int = 10
    # Existing members whose status a batch subscribe changed: a sync must leave it at 0.
    status_changes: int = 0
    next_segment_id: int = 1001
    connections: Counter[str] = field(default_factory=Counter)

    tunables: ClassVar[tuple[str, ...]] = ("max_concurrent",)

    def add_list(self, list_id: str, name: str | None = None) -> MailingList:
        found = self.lists.get(list_id)
        if found is None:
            found = self.lists[list_id] = MailingList(list_id, name or f"Audience {list_id}")
        return found

    def summary(self, *, members: bool) -> dict[str, Any]:
        lists: dict[str, Any] = {}
        for audience in self.lists.values():
            entry: dict[str, Any] = {
                "name": audience.name,
                "member_count": len(audience.members),
                "statuses": dict(Counter(each.status for each in audience.members.values())),
                "segments": {
                    str(segment.id): {
                        "name": segment.name,
                        "member_count": len(segment.members),
                        **({"members": sorted(segment.members)} if members else {}),
                    }
                    for segment in audience.segments.values()
                },
            }
            if members:
                entry["members"] = {
                    each.email_address.lower(): each.status for each in audience.members.values()
                }
            lists[audience.id] = entry
        return {"lists": lists, "status_changes": self.status_changes}


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    errors: list[dict[str, str]] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": ERROR_TYPE,
        "title": title or TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": str(uuid.uuid4()),
    }
    if errors:
        body["errors"] = errors
    return json_response(body, status, media_type=PROBLEM_JSON)


def invalid(detail: str, field_name: str = "", message: str = "") -> Response:
    errors = [{"field": field_name, "message": message or detail}] if field_name else None
    return problem(400, detail, errors=errors)


def not_found() -> Response:
    return problem(404, "The requested resource could not be found.")


def member_view(list_id: str, member: Member) -> dict[str, Any]:
    digest = subscriber_hash(member.email_address)
    return {
        "id": digest,
        "email_address": member.email_address,
        "unique_email_id": digest[:10],
        "status": member.status,
        "merge_fields": member.merge_fields,
        "list_id": list_id,
    }


def segment_view(segment: Segment) -> dict[str, Any]:
    return {
        "id": segment.id,
        "name": segment.name,
        "member_count": len(segment.members),
        "type": "static",
        "created_at": segment.created_at,
        "updated_at": segment.updated_at,
        "options": {"match": "any", "conditions": []},
        "list_id": segment.list_id,
        "_links": [],
    }


def page_bounds(call: Call) -> tuple[int, int] | Response:
    """`count` (default 10, at most 1000) and `offset` query parameters."""
    try:
        count = int(call.query.get("count", "10"))
        offset = int(call.query.get("offset", "0"))
    except ValueError:
        return invalid("count and offset must be integers")
    if not 1 <= count <= MAX_PAGE or offset < 0:
        return invalid(f"count must be between 1 and {MAX_PAGE} and offset at least 0")
    return count, offset


def email_list(body: dict[str, Any], name: str) -> list[str] | Response:
    values = body.get(name, [])
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        return invalid(
            "The resource submitted could not be validated.", name, "Expected an array of emails"
        )
    if len(values) > MAX_ITEMS:
        return invalid(
            f"Maximum allowed member items exceeded, please provide at most {MAX_ITEMS} items "
            f"in {name} field"
        )
    return values


def _member_problem(index: int, member: Any) -> Response | None:
    where = f"members.item:{index}"
    if not isinstance(member, dict):
        return invalid(
            "The resource submitted could not be validated.", where, "Expected an object"
        )
    if not isinstance(member.get("email_address"), str):
        return invalid(
            "The resource submitted could not be validated.",
            f"{where}.email_address",
            "This value should not be blank.",
        )
    for name in ("status", "status_if_new"):
        if name in member and member[name] not in STATUSES:
            return invalid(
                "The resource submitted could not be validated.",
                f"{where}.{name}",
                f"Value is not one of: {', '.join(STATUSES)}",
            )
    if not isinstance(member.get("merge_fields", {}), dict):
        return invalid(
            "The resource submitted could not be validated.",
            f"{where}.merge_fields",
            "Expected an object",
        )
    return None


class MailchimpFake(Vendor):
    name = "mailchimp"
    prefix = "/3.0"

    def __init__(self, state: MailchimpState) -> None:
        super().__init__(state)
        self.mailchimp = state

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/ping", self.ping),
            Endpoint("GET", "/lists/{list_id}", self.get_list),
            Endpoint("POST", "/lists/{list_id}", self.batch_subscribe),
            Endpoint("GET", "/lists/{list_id}/members/{subscriber_hash}", self.get_member),
            Endpoint("GET", "/lists/{list_id}/segments", self.list_segments),
            Endpoint("POST", "/lists/{list_id}/segments", self.create_segment),
            Endpoint("GET", "/lists/{list_id}/segments/{segment_id}", self.get_segment),
            Endpoint("PATCH", "/lists/{list_id}/segments/{segment_id}", self.update_segment),
            Endpoint("DELETE", "/lists/{list_id}/segments/{segment_id}", self.delete_segment),
            Endpoint("POST", "/lists/{list_id}/segments/{segment_id}", self.change_segment),
            Endpoint("GET", "/lists/{list_id}/segments/{segment_id}/members", self.segment_members),
        ]

    def error(self, status: int, detail: str, *, title: str | None = None) -> Response:
        return problem(status, detail, title=title)

    def authenticate(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "basic" or not credentials:
            return problem(401, "Your request did not include an API key.", title="API Key Missing")
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        if decoded.partition(":")[2] != self.mailchimp.api_key:
            return problem(
                401,
                "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
            )
        return None

    def admit(self, request: Request) -> Admission:
        key = request.headers.get("authorization", "")
        connections = self.mailchimp.connections
        if connections[key] >= self.mailchimp.max_concurrent:
            return Admission(
                denial=problem(
                    429,
                    f"You have exceeded the limit of {self.mailchimp.max_concurrent} "
                    "simultaneous connections.",
                )
            )
        connections[key] += 1

        def release() -> None:
            connections[key] -= 1
            if connections[key] <= 0:
                del connections[key]

        return Admission(release=release)

    def control_routes(self) -> list[BaseRoute]:
        state = self.mailchimp

        async def add_list(request: Request) -> Response:
            data = await request.json()
            if not isinstance(data, dict) or not isinstance(data.get("id"), str):
                return json_response({"error": 'send {"id": "...", "name": "..."}'}, 400)
            audience = state.add_list(data["id"], data.get("name"))
            return json_response({"id": audience.id, "name": audience.name}, 201)

        async def add_members(request: Request) -> Response:
            audience = state.lists.get(request.path_params["list_id"])
            if audience is None:
                return json_response({"error": "no such list"}, 404)
            data = await request.json()
            members = data.get("members") if isinstance(data, dict) else None
            if not isinstance(members, list):
                return json_response({"error": 'send {"members": [...]}'}, 400)
            for index, member in enumerate(members):
                if _member_problem(index, member) is not None:
                    return json_response({"error": f"members[{index}] is invalid"}, 400)
                audience.add_member(
                    member["email_address"],
                    member.get("status", "subscribed"),
                    member.get("merge_fields"),
                )
            return json_response({"member_count": len(audience.members)}, 201)

        return [
            Route("/_fake/lists", add_list, methods=["POST"]),
            Route("/_fake/lists/{list_id}/members", add_members, methods=["POST"]),
        ]

    # Handlers: plain functions, so each runs without interleaving with another request.

    def ping(self, call: Call) -> Response:
        return json_response({"health_status": "Everything's Chimpy!"})

    def _list(self, call: Call) -> MailingList | None:
        return self.mailchimp.lists.get(call.params["list_id"])

    def _segment(self, call: Call) -> tuple[MailingList, Segment] | None:
        audience = self._list(call)
        segment_id = call.params["segment_id"]
        if audience is None or not segment_id.isdigit():
            return None
        segment = audience.segments.get(int(segment_id))
        return None if segment is None else (audience, segment)

    def get_list(self, call: Call) -> Response:
        audience = self._list(call)
        if audience is None:
            return not_found()
        subscribed = sum(1 for each in audience.members.values() if each.status == "subscribed")
        return json_response(
            {
                "id": audience.id,
                "name": audience.name,
                "stats": {"member_count": subscribed, "total_contacts": len(audience.members)},
            }
        )

    def get_member(self, call: Call) -> Response:
        audience = self._list(call)
        member = None if audience is None else audience.members.get(call.params["subscriber_hash"])
        if audience is None or member is None:
            return not_found()
        return json_response(member_view(audience.id, member))

    def batch_subscribe(self, call: Call) -> Response:
        audience = self._list(call)
        if audience is None:
            return not_found()
        body = call.body
        if not isinstance(body, dict) or not isinstance(body.get("members"), list):
            return invalid("The resource submitted could not be validated.", "members", "Required")
        members = body["members"]
        if len(members) > MAX_ITEMS:
            return invalid(
                f"Maximum allowed member items exceeded, please provide at most {MAX_ITEMS} "
                "items in members field"
            )
        for index, member in enumerate(members):
            found = _member_problem(index, member)
            if found is not None:
                return found
        update_existing = body.get("update_existing") is True
        created: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        errors: list[dict[str, str]] = []
        for member in members:
            email = member["email_address"]
            failure = self._subscribe(audience, member, update_existing, created, updated)
            if failure is not None:
                errors.append(
                    {"email_address": email, "error": failure[1], "error_code": failure[0]}
                )
        return json_response(
            {
                "new_members": created,
                "updated_members": updated,
                "errors": errors,
                "total_created": len(created),
                "total_updated": len(updated),
                "error_count": len(errors),
                "_links": [],
            }
        )

    def _subscribe(
        self,
        audience: MailingList,
        member: dict[str, Any],
        update_existing: bool,
        created: list[dict[str, Any]],
        updated: list[dict[str, Any]],
    ) -> tuple[str, str] | None:
        """Add or update one member; an (error_code, error) pair when it fails."""
        email: str = member["email_address"]
        rejection = self.state.rejection(email)
        if rejection is not None:
            return "ERROR_GENERIC", rejection
        if not EMAIL.match(email):
            return (
                "ERROR_GENERIC",
                f"{email} looks fake or invalid, please enter a real email address.",
            )
        digest = subscriber_hash(email)
        merge_fields = member.get("merge_fields") or {}
        existing = audience.members.get(digest)
        if existing is None:
            status = member.get("status") or member.get("status_if_new")
            if status is None:
                return "ERROR_GENERIC", f"{email}: a status is required to add a new member."
            new = audience.members[digest] = Member(email, status, dict(merge_fields))
            created.append(member_view(audience.id, new))
            return None
        if not update_existing:
            return (
                "ERROR_CONTACT_EXISTS",
                f"{email} is already a list member. Use PUT to insert or update list members.",
            )
        # Only an explicit `status` changes an existing member; `status_if_new` never does.
        if "status" in member and member["status"] != existing.status:
            existing.status = member["status"]
            self.mailchimp.status_changes += 1
        existing.merge_fields.update(merge_fields)
        updated.append(member_view(audience.id, existing))
        return None

    def list_segments(self, call: Call) -> Response:
        audience = self._list(call)
        if audience is None:
            return not_found()
        bounds = page_bounds(call)
        if isinstance(bounds, Response):
            return bounds
        count, offset = bounds
        kind = call.query.get("type")
        if kind not in (None, "static", "saved", "fuzzy"):
            return invalid("type must be saved, static or fuzzy")
        segments = [] if kind in ("saved", "fuzzy") else list(audience.segments.values())
        return json_response(
            {
                "segments": [segment_view(each) for each in segments[offset : offset + count]],
                "list_id": audience.id,
                "total_items": len(segments),
                "_links": [],
            }
        )

    def _static_members(
        self, audience: MailingList, body: dict[str, Any]
    ) -> set[str] | Response | None:
        if "options" in body:
            return invalid("This fake supports static segments only: send static_segment.")
        if "static_segment" not in body:
            return None
        emails = email_list(body, "static_segment")
        if isinstance(emails, Response):
            return emails
        # As Mailchimp documents: emails not on the audience are ignored.
        return {email.lower() for email in emails if audience.member(email) is not None}

    def _name(self, audience: MailingList, body: Any, current: Segment | None) -> str | Response:
        if not isinstance(body, dict):
            return invalid("The resource submitted could not be validated.", "name", "Required")
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            return invalid("The resource submitted could not be validated.", "name", "Required")
        if len(name) > 100:
            return invalid("The resource submitted could not be validated.", "name", "Too long")
        taken = audience.segment_named(name)
        if taken is not None and taken is not current:
            return invalid(f"A segment named {name!r} already exists in this audience.")
        return name

    def create_segment(self, call: Call) -> Response:
        audience = self._list(call)
        if audience is None:
            return not_found()
        name = self._name(audience, call.body, None)
        if isinstance(name, Response):
            return name
        members = self._static_members(audience, call.body)
        if isinstance(members, Response):
            return members
        if members is None:
            return invalid("This fake supports static segments only: send static_segment.")
        segment = Segment(self.mailchimp.next_segment_id, name, audience.id, members)
        self.mailchimp.next_segment_id += 1
        audience.segments[segment.id] = segment
        return json_response(segment_view(segment))

    def get_segment(self, call: Call) -> Response:
        found = self._segment(call)
        if found is None:
            return not_found()
        return json_response(segment_view(found[1]))

    def update_segment(self, call: Call) -> Response:
        found = self._segment(call)
        if found is None:
            return not_found()
        audience, segment = found
        name = self._name(audience, call.body, segment)
        if isinstance(name, Response):
            return name
        members = self._static_members(audience, call.body)
        if isinstance(members, Response):
            return members
        segment.name = name
        if members is not None:
            segment.members = members
        segment.changed()
        return json_response(segment_view(segment))

    def delete_segment(self, call: Call) -> Response:
        found = self._segment(call)
        if found is None:
            return not_found()
        audience, segment = found
        del audience.segments[segment.id]
        return no_content()

    def change_segment(self, call: Call) -> Response:
        found = self._segment(call)
        if found is None:
            return not_found()
        audience, segment = found
        body = call.body if isinstance(call.body, dict) else {}
        to_add = email_list(body, "members_to_add")
        if isinstance(to_add, Response):
            return to_add
        to_remove = email_list(body, "members_to_remove")
        if isinstance(to_remove, Response):
            return to_remove
        errors: dict[str, list[str]] = {}
        added: list[dict[str, Any]] = []
        removed: list[dict[str, Any]] = []
        for emails, adding in ((to_add, True), (to_remove, False)):
            for email in emails:
                failure = self.state.rejection(email)
                member = audience.member(email) if failure is None else None
                if member is None:
                    errors.setdefault(failure or NOT_ON_LIST, []).append(email)
                    continue
                key = email.lower()
                if adding and key not in segment.members:
                    segment.members.add(key)
                    added.append(member_view(audience.id, member))
                elif not adding and key in segment.members:
                    segment.members.discard(key)
                    removed.append(member_view(audience.id, member))
        if added or removed:
            segment.changed()
        return json_response(
            {
                "members_added": added,
                "members_removed": removed,
                "errors": [
                    {"email_addresses": emails, "error": error} for error, emails in errors.items()
                ],
                "total_added": len(added),
                "total_removed": len(removed),
                "error_count": sum(len(emails) for emails in errors.values()),
                "_links": [],
            }
        )

    def segment_members(self, call: Call) -> Response:
        found = self._segment(call)
        if found is None:
            return not_found()
        audience, segment = found
        bounds = page_bounds(call)
        if isinstance(bounds, Response):
            return bounds
        count, offset = bounds
        views = []
        for email in segment.page(offset, count):
            member = audience.member(email)
            if member is not None:
                views.append(member_view(audience.id, member))
        return json_response({"members": views, "total_items": len(segment.members), "_links": []})


def create_app(state: MailchimpState | None = None) -> Starlette:
    """The fake Mailchimp app; pass a state to inspect or seed it, e.g. `state.add_list(...)`."""
    return build_app(MailchimpFake(state or MailchimpState()))

"""Fake HCL Commerce admin REST v2: customer segments as member groups, and memberships.

Base URL `http://host:port/rest/admin/v2`; `Authorization: Bearer <token>`. A customer segment
is a member group with usage `CustomerSegment`; its explicit members are memberships with
`exclude` "0" (included) or "1" (excluded). Members are the store's customers by member id;
when `customers` is set, a membership for anyone else is refused. Production and staging are
two instances of this fake, at two base URLs. There is no public OpenAPI document to check
requests against; errors use the shape `{"errors": [{"errorKey", "errorCode",
"errorMessage"}]}`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tests.fakes.app import Call, Endpoint, Vendor, build_app, json_response, no_content
from tests.fakes.state import FakeState

DEFAULT_TOKEN = "fake-commerce-token"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MEMBERSHIP_ID = re.compile(r"memberId:(.+),memberGroupId:(\d+)")
KEYS = {
    400: "_ERR_BAD_REQUEST",
    401: "_ERR_AUTHENTICATION_ERROR",
    403: "_ERR_FORBIDDEN",
    404: "_ERR_RESOURCE_NOT_FOUND",
    409: "_ERR_RESOURCE_CONFLICT",
    413: "_ERR_REQUEST_TOO_LARGE",
    429: "_ERR_TOO_MANY_REQUESTS",
    500: "_ERR_GENERIC",
    503: "_ERR_SERVICE_UNAVAILABLE",
}


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class MemberGroup:
    """`memberships` maps a member id to its `exclude` flag, "0" or "1"."""

    id: int
    name: str
    store_id: str
    usage: list[str]
    description: str = ""
    memberships: dict[str, str] = field(default_factory=dict)
    updated: str = field(default_factory=now_text)

    def included(self) -> set[str]:
        return {member for member, exclude in self.memberships.items() if exclude == "0"}

    def excluded(self) -> set[str]:
        return {member for member, exclude in self.memberships.items() if exclude == "1"}


@dataclass
class CommerceState(FakeState):
    api_key: str = DEFAULT_TOKEN
    groups: dict[int, MemberGroup] = field(default_factory=dict)
    # The store's customers (member ids); None accepts any id as a customer.
    customers: set[str] | None = None
    next_group_id: int = 10001

    def group_named(self, name: str, store_id: str | None = None) -> MemberGroup | None:
        return next(
            (
                each
                for each in self.groups.values()
                if each.name == name and store_id in (None, each.store_id)
            ),
            None,
        )

    def add_customers(self, *member_ids: str) -> None:
        if self.customers is None:
            self.customers = set()
        self.customers.update(member_ids)

    def summary(self, *, members: bool) -> dict[str, Any]:
        groups: dict[str, Any] = {}
        for group in self.groups.values():
            entry: dict[str, Any] = {
                "name": group.name,
                "storeId": group.store_id,
                "usage": group.usage,
                "included_count": len(group.included()),
                "excluded_count": len(group.excluded()),
            }
            if members:
                entry["included"] = sorted(group.included())
                entry["excluded"] = sorted(group.excluded())
            groups[str(group.id)] = entry
        return {"groups": groups}


def errors(status: int, message: str, key: str | None = None) -> Response:
    error = {
        "errorKey": key or KEYS.get(status, "_ERR_GENERIC"),
        "errorCode": f"CWXFR{status:04d}E",
        "errorMessage": message,
    }
    return json_response({"errors": [error]}, status)


def number(value: str) -> int | str:
    """HCL ids are numbers; keep a store or member id that is not one as text."""
    return int(value) if value.isdigit() else value


def group_view(group: MemberGroup) -> dict[str, Any]:
    return {
        "id": group.id,
        "name": group.name,
        "description": group.description,
        "storeId": number(group.store_id),
        "usage": group.usage,
        "ownerId": "7000000000000000101",
        "allowExport": True,
        "exportAll": False,
        "updatedBy": "fake",
        "updatedDateTime": group.updated,
    }


def membership_view(group: MemberGroup, member_id: str) -> dict[str, Any]:
    return {
        "memberId": member_id,
        "memberGroupId": group.id,
        "exclude": group.memberships[member_id],
    }


def id_text(value: Any) -> str | None:
    """An id sent as a JSON number or string, as text; None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def paging(call: Call) -> tuple[int, int] | Response:
    try:
        offset = int(call.query.get("offset", "0"))
        limit = int(call.query.get("limit", str(DEFAULT_LIMIT)))
    except ValueError:
        return errors(400, "offset and limit must be integers.")
    if offset < 0 or not 1 <= limit <= MAX_LIMIT:
        return errors(400, f"offset must be at least 0 and limit between 1 and {MAX_LIMIT}.")
    return offset, limit


class CommerceFake(Vendor):
    name = "commerce"
    prefix = "/rest/admin/v2"

    def __init__(self, state: CommerceState) -> None:
        super().__init__(state)
        self.commerce = state

    def endpoints(self) -> list[Endpoint]:
        groups = "/member-groups"
        memberships = "/member-group-memberships"
        return [
            Endpoint("GET", groups + "/by-name-and-usage", self.find_group),
            Endpoint("GET", groups, self.list_groups),
            Endpoint("POST", groups, self.create_group),
            Endpoint("GET", groups + "/{id}", self.get_group),
            Endpoint("PATCH", groups + "/{id}", self.update_group),
            Endpoint("DELETE", groups + "/{id}", self.delete_group),
            Endpoint("GET", memberships, self.list_memberships),
            Endpoint("POST", memberships, self.create_membership),
            Endpoint("GET", memberships + "/{membership}", self.get_membership),
            Endpoint("DELETE", memberships + "/{membership}", self.delete_membership),
        ]

    def error(self, status: int, detail: str, *, title: str | None = None) -> Response:
        return errors(status, detail)

    def authenticate(self, request: Request) -> Response | None:
        if request.headers.get("authorization") != f"Bearer {self.commerce.api_key}":
            return errors(401, "The request is not authenticated: send a valid bearer token.")
        return None

    def control_routes(self) -> list[BaseRoute]:
        state = self.commerce

        async def add_customers(request: Request) -> Response:
            data = await request.json()
            ids = data.get("member_ids") if isinstance(data, dict) else None
            if not isinstance(ids, list) or not all(isinstance(each, str) for each in ids):
                return json_response({"error": 'send {"member_ids": ["...", ...]}'}, 400)
            state.add_customers(*ids)
            return json_response({"customer_count": len(state.customers or ())}, 201)

        return [Route("/_fake/customers", add_customers, methods=["POST"])]

    # Handlers: plain functions, so each runs without interleaving with another request.

    def find_group(self, call: Call) -> Response:
        store_id = call.query.get("storeId")
        usage = call.query.get("usage")
        name = call.query.get("memberGroupName")
        if not store_id or not usage or name is None:
            return errors(400, "storeId, usage and memberGroupName are required.")
        found = [
            group_view(each)
            for each in self.commerce.groups.values()
            if each.store_id == store_id and each.name == name and usage in each.usage
        ]
        return json_response({"count": len(found), "items": found})

    def list_groups(self, call: Call) -> Response:
        bounds = paging(call)
        if isinstance(bounds, Response):
            return bounds
        offset, limit = bounds
        store_id = call.query.get("storeId")
        usage = call.query.get("usage")
        found = [
            each
            for each in self.commerce.groups.values()
            if store_id in (None, each.store_id) and (usage is None or usage in each.usage)
        ]
        items = [group_view(each) for each in found[offset : offset + limit]]
        return json_response({"count": len(found), "items": items})

    def create_group(self, call: Call) -> Response:
        body = call.body
        if not isinstance(body, dict):
            return errors(400, "Send the member group as a JSON object.")
        name = body.get("name")
        usage = body.get("usage", ["GeneralPurpose"])
        store_id = call.query.get("storeId") or id_text(body.get("storeId"))
        body_store = id_text(body.get("storeId"))
        if not isinstance(name, str) or not name.strip():
            return errors(400, "The member group name is required.", "_ERR_MISSING_NAME")
        if not store_id:
            return errors(400, "storeId is required.", "_ERR_MISSING_STORE_ID")
        if body_store is not None and body_store != store_id:
            return errors(400, "The storeId in the body differs from the query's.")
        if not isinstance(usage, list) or not all(isinstance(each, str) for each in usage):
            return errors(400, "usage is an array of usage names.")
        if self.commerce.group_named(name, store_id) is not None:
            return errors(
                409, f"A member group named {name!r} already exists.", "_ERR_DUPLICATE_NAME"
            )
        description = body.get("description")
        group = MemberGroup(
            self.commerce.next_group_id,
            name,
            store_id,
            usage,
            description if isinstance(description, str) else "",
        )
        self.commerce.next_group_id += 1
        self.commerce.groups[group.id] = group
        location = call.url(f"{self.prefix}/member-groups/{group.id}")
        return json_response(group_view(group), 201, headers={"Location": location})

    def _group(self, call: Call) -> MemberGroup | None:
        text = call.params["id"]
        return self.commerce.groups.get(int(text)) if text.isdigit() else None

    def get_group(self, call: Call) -> Response:
        group = self._group(call)
        if group is None:
            return errors(404, f"Member group {call.params['id']} was not found.")
        return json_response(group_view(group))

    def update_group(self, call: Call) -> Response:
        group = self._group(call)
        if group is None:
            return errors(404, f"Member group {call.params['id']} was not found.")
        body = call.body if isinstance(call.body, dict) else {}
        name = body.get("name", group.name)
        description = body.get("description", group.description)
        if not isinstance(name, str) or not name.strip() or not isinstance(description, str):
            return errors(400, "name and description must be non-empty text.")
        taken = self.commerce.group_named(name, group.store_id)
        if taken is not None and taken is not group:
            return errors(
                409, f"A member group named {name!r} already exists.", "_ERR_DUPLICATE_NAME"
            )
        group.name = name
        group.description = description
        group.updated = now_text()
        return json_response(group_view(group))

    def delete_group(self, call: Call) -> Response:
        group = self._group(call)
        if group is None:
            return errors(404, f"Member group {call.params['id']} was not found.")
        del self.commerce.groups[group.id]
        return no_content()

    def list_memberships(self, call: Call) -> Response:
        bounds = paging(call)
        if isinstance(bounds, Response):
            return bounds
        offset, limit = bounds
        group_text = call.query.get("memberGroupId")
        member_id = call.query.get("memberId")
        exclude = call.query.get("exclude")
        if group_text is not None and not group_text.isdigit():
            return errors(400, "memberGroupId must be a number.")
        if group_text is None:
            groups = list(self.commerce.groups.values())
        else:
            found = self.commerce.groups.get(int(group_text))
            groups = [] if found is None else [found]
        if member_id is None and exclude is None and len(groups) == 1:
            # The common read of one group: skip to the page without building the whole list.
            group = groups[0]
            page = itertools.islice(group.memberships, offset, offset + limit)
            items = [membership_view(group, each) for each in page]
            return json_response({"count": len(group.memberships), "items": items})
        matching = [
            (group, member)
            for group in groups
            for member, flag in group.memberships.items()
            if member_id in (None, member) and exclude in (None, flag)
        ]
        items = [
            membership_view(group, member) for group, member in matching[offset : offset + limit]
        ]
        return json_response({"count": len(matching), "items": items})

    def create_membership(self, call: Call) -> Response:
        body = call.body
        if not isinstance(body, dict):
            return errors(400, "Send the membership as a JSON object.")
        member_id = id_text(body.get("memberId"))
        group_text = id_text(body.get("memberGroupId"))
        exclude = body.get("exclude", "0")
        if member_id is None:
            return errors(400, "memberId is required.", "_ERR_MISSING_MEMBER_ID")
        if group_text is None or not group_text.isdigit():
            return errors(400, "memberGroupId is required.", "_ERR_MISSING_MEMBER_GROUP_ID")
        if exclude not in ("0", "1"):
            return errors(400, 'exclude must be "0" or "1".', "_ERR_INVALID_EXCLUDE")
        group = self.commerce.groups.get(int(group_text))
        if group is None:
            return errors(
                400, f"Member group {group_text} does not exist.", "_ERR_MEMBER_GROUP_NOT_FOUND"
            )
        rejection = self.state.rejection(member_id)
        if rejection is not None:
            return errors(400, rejection, "_ERR_MEMBER_REJECTED")
        customers = self.commerce.customers
        if customers is not None and member_id not in customers:
            return errors(400, f"Member {member_id} does not exist.", "_ERR_MEMBER_NOT_FOUND")
        if member_id in group.memberships:
            return errors(
                409,
                f"Member {member_id} already has a membership of group {group.id}.",
                "_ERR_MEMBERSHIP_EXISTS",
            )
        group.memberships[member_id] = exclude
        membership = f"memberId:{member_id},memberGroupId:{group.id}"
        location = call.url(f"{self.prefix}/member-group-memberships/{membership}")
        return json_response(membership_view(group, member_id), 201, headers={"Location": location})

    def _membership(self, call: Call) -> tuple[MemberGroup, str] | Response:
        match = MEMBERSHIP_ID.fullmatch(call.params["membership"])
        if match is None:
            return errors(400, "Address a membership as memberId:{m},memberGroupId:{g}.")
        member_id, group_text = match.groups()
        group = self.commerce.groups.get(int(group_text))
        if group is None or member_id not in group.memberships:
            return errors(404, f"Membership {call.params['membership']} was not found.")
        return group, member_id

    def get_membership(self, call: Call) -> Response:
        found = self._membership(call)
        if isinstance(found, Response):
            return found
        return json_response(membership_view(*found))

    def delete_membership(self, call: Call) -> Response:
        found = self._membership(call)
        if isinstance(found, Response):
            return found
        group, member_id = found
        del group.memberships[member_id]
        return no_content()


def create_app(state: CommerceState | None = None) -> Starlette:
    """The fake commerce store; run one for production and one for staging."""
    return build_app(CommerceFake(state or CommerceState()))

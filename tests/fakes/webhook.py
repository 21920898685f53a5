"""Fake webhook receiver: checks each signed batch, records it, and applies it.

A batch is POSTed (to any path) as `{"sync_id", "segment_id", "segment_name", "batch",
"added": [member, ...], "removed": [member, ...]}`, a member being `{"external_id", "email",
"first_name", "last_name"}`, at most 1,000 per batch, and signed as Stripe does:
`X-Segments-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
A missing or wrong signature gets 401, a timestamp more than `tolerance` seconds (5 minutes)
away gets 400. Accepted batches are kept in arrival order in `batches` (retries included) and
applied to `segments[segment_id].members`, keyed by external id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.responses import Response

from tests.fakes.app import Call, Endpoint, Vendor, build_app, json_response
from tests.fakes.state import FakeState

DEFAULT_SECRET = "fake-webhook-secret"
SIGNATURE_HEADER = "x-segments-signature"
MAX_MEMBERS = 1000


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `X-Segments-Signature` value for `body`, as a sender computes it."""
    moment = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{moment}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={moment},v1={digest}"


@dataclass
class ReceivedSegment:
    id: str
    name: str
    members: dict[str, dict[str, Any]] = field(default_factory=dict)  # by external id


@dataclass
class WebhookState(FakeState):
    api_key: str = ""  # unused: the signature authenticates
    secret: str = DEFAULT_SECRET
    tolerance: float = 300.0
    batches: list[dict[str, Any]] = field(default_factory=list)
    segments: dict[str, ReceivedSegment] = field(default_factory=dict)
    bad_signatures: int = 0
    stale_signatures: int = 0

    tunables: ClassVar[tuple[str, ...]] = ("tolerance",)

    def external_ids(self, segment_id: str) -> set[str]:
        """What the receiver holds for a segment."""
        found = self.segments.get(segment_id)
        return set() if found is None else set(found.members)

    def summary(self, *, members: bool) -> dict[str, Any]:
        return {
            "batches": len(self.batches),
            "bad_signatures": self.bad_signatures,
            "stale_signatures": self.stale_signatures,
            "segments": {
                each.id: {
                    "name": each.name,
                    "member_count": len(each.members),
                    **({"members": sorted(each.members)} if members else {}),
                }
                for each in self.segments.values()
            },
        }


def _signature(header: str) -> tuple[int, list[str]] | None:
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1" and value:
            signatures.append(value)  # several during a secret rotation
    if timestamp is None or not signatures:
        return None
    return timestamp, signatures


def _batch_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "the batch is a JSON object"
    for name in ("sync_id", "segment_id", "segment_name"):
        if not isinstance(body.get(name), str):
            return f"{name} must be a string"
    if not isinstance(body.get("batch"), int) or isinstance(body.get("batch"), bool):
        return "batch must be an integer"
    count = 0
    for name in ("added", "removed"):
        members = body.get(name)
        if not isinstance(members, list):
            return f"{name} must be an array"
        for index, member in enumerate(members):
            if not isinstance(member, dict) or not isinstance(member.get("external_id"), str):
                return f"{name}[{index}] needs an external_id"
        count += len(members)
    if count > MAX_MEMBERS:
        return f"a batch holds at most {MAX_MEMBERS} members, this one {count}"
    return None


class WebhookFake(Vendor):
    name = "webhook"

    def __init__(self, state: WebhookState) -> None:
        super().__init__(state)
        self.webhook = state

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("POST", "/{path:path}", self.receive, parse_json=False)]

    def receive(self, call: Call) -> Response:
        state = self.webhook
        parsed = _signature(call.request.headers.get(SIGNATURE_HEADER, ""))
        if parsed is None:
            state.bad_signatures += 1
            return json_response({"error": "missing or malformed X-Segments-Signature"}, 401)
        timestamp, signatures = parsed
        expected = sign(state.secret, call.raw, timestamp).rpartition("v1=")[2]
        if not any(hmac.compare_digest(expected, each) for each in signatures):
            state.bad_signatures += 1
            return json_response({"error": "the signature does not match the body"}, 401)
        if abs(time.time() - timestamp) > state.tolerance:
            state.stale_signatures += 1
            return json_response({"error": "the signature timestamp is too old"}, 400)
        try:
            body = json.loads(call.raw)
        except ValueError:
            return json_response({"error": "the body is not valid JSON"}, 400)
        problem = _batch_problem(body)
        if problem is not None:
            return json_response({"error": problem}, 400)
        rejected = [
            member["external_id"]
            for member in [*body["added"], *body["removed"]]
            if state.rejection(member["external_id"]) is not None
        ]
        if rejected:
            message = state.rejection(rejected[0])
            return json_response({"error": message, "external_ids": rejected}, 422)
        state.batches.append(body)
        segment = state.segments.setdefault(
            body["segment_id"], ReceivedSegment(body["segment_id"], body["segment_name"])
        )
        segment.name = body["segment_name"]
        for member in body["added"]:
            segment.members[member["external_id"]] = member
        for member in body["removed"]:
            segment.members.pop(member["external_id"], None)
        return json_response({"received": True, "batch": body["batch"]})


def create_app(state: WebhookState | None = None) -> Starlette:
    """The fake webhook receiver; `state.secret` is the shared signing secret."""
    return build_app(WebhookFake(state or WebhookState()))

"""The request pipeline every fake shares, and the `/_fake/*` control endpoints.

Each vendor request goes: count it, admit it (concurrency or rate limits), take a pending
fault, read the body, apply the fault, authenticate, parse the body, validate it against the
vendor's OpenAPI operation, then hand it to the vendor's handler. Handlers are plain
functions: they never await, so each changes the state in one step (see `state.py`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tests.fakes.faults import Fault, fault_from_json
from tests.fakes.openapi import Operation, Problem, VendorSpec
from tests.fakes.state import FakeState

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def json_response(
    data: Any,
    status: int = 200,
    *,
    media_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Response:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return Response(body, status_code=status, headers=headers, media_type=media_type)


def no_content() -> Response:
    return Response(status_code=204)


@dataclass(slots=True)
class Call:
    """One request as a handler sees it: path parameters, query, parsed JSON body, raw bytes."""

    request: Request
    params: dict[str, Any]
    query: QueryParams
    body: Any
    raw: bytes

    def url(self, path: str) -> str:
        """An absolute URL on this fake, for links and `Location` headers."""
        return str(self.request.base_url).rstrip("/") + path


Handler = Callable[[Call], Response]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A vendor route; `path` is also the OpenAPI path template of its operation."""

    method: str
    path: str
    handler: Handler
    max_body: int | None = None
    parse_json: bool = True


def _nothing() -> None:
    return None


@dataclass(slots=True)
class Admission:
    """A vendor's verdict on letting a request in: a denial, headers for every answer, and
    what to undo when the request is done."""

    denial: Response | None = None
    headers: dict[str, str] = field(default_factory=dict)
    release: Callable[[], None] = _nothing


class Vendor:
    """How one vendor speaks. A fake subclasses it and lists its endpoints."""

    name: ClassVar[str] = "vendor"
    prefix: ClassVar[str] = ""

    def __init__(self, state: FakeState, spec: VendorSpec | None = None) -> None:
        self.state = state
        self.spec = spec

    def endpoints(self) -> list[Endpoint]:
        return []

    def control_routes(self) -> list[BaseRoute]:
        return []

    def error(self, status: int, detail: str, *, title: str | None = None) -> Response:
        return json_response({"error": detail}, status)

    def invalid(self, problem: Problem) -> Response:
        """A request that does not match the vendor's OpenAPI operation."""
        return self.error(400, problem.message)

    def authenticate(self, request: Request) -> Response | None:
        return None

    def admit(self, request: Request) -> Admission:
        return Admission()

    def fault_response(self, fault: Fault) -> Response:
        status = fault.status or 500
        response = self.error(status, f"fault injected by the test (status {status})")
        retry_after = fault.retry_after_header()
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response

    def operation(self, endpoint: Endpoint) -> Operation | None:
        if self.spec is None:
            return None
        return self.spec.operation(endpoint.method, endpoint.path)


def _answer(vendor: Vendor, endpoint: Endpoint, request: Request, raw: bytes) -> Response:
    denial = vendor.authenticate(request)
    if denial is not None:
        return denial
    if endpoint.max_body is not None and len(raw) > endpoint.max_body:
        return vendor.error(
            413, f"the request body is {len(raw)} bytes, more than {endpoint.max_body}"
        )
    body: Any = None
    if raw and endpoint.parse_json:
        try:
            body = json.loads(raw)
        except ValueError:
            return vendor.error(400, "the request body is not valid JSON")
    operation = vendor.operation(endpoint)
    if operation is not None:
        problem = operation.validate(
            path_params=request.path_params,
            query=request.query_params,
            headers=request.headers,
            body=body,
            has_body=bool(raw),
        )
        if problem is not None:
            return vendor.invalid(problem)
    call = Call(request, request.path_params, request.query_params, body, raw)
    return endpoint.handler(call)


async def _respond(
    vendor: Vendor, endpoint: Endpoint, request: Request, fault: Fault | None
) -> Response:
    try:
        # Read before any delay: a slow server has the request in hand and processes it
        # late, even when the client has given up by then.
        raw = await request.body()
    except ClientDisconnect:
        return Response(status_code=499)  # nobody is listening any more
    if fault is not None and fault.delay > 0 and fault.delay_when == "before":
        await asyncio.sleep(fault.delay)
    if fault is not None and fault.status is not None:
        return vendor.fault_response(fault)
    return _answer(vendor, endpoint, request, raw)


def _route(vendor: Vendor, endpoint: Endpoint, *, unmatched: bool = False) -> Route:
    path = endpoint.path if unmatched else vendor.prefix + endpoint.path
    key = "UNMATCHED" if unmatched else f"{endpoint.method} {path}"
    state = vendor.state

    async def run(request: Request) -> Response:
        state.stats.begin(key)
        status = 500
        admission = vendor.admit(request)
        fault = None
        try:
            if admission.denial is not None:
                response = admission.denial
            else:
                fault = state.faults.take(request.method, request.scope["path"])
                response = await _respond(vendor, endpoint, request, fault)
            for name, value in admission.headers.items():
                response.headers.setdefault(name, value)
            if fault is not None and fault.delay > 0 and fault.delay_when == "after":
                await asyncio.sleep(fault.delay)
            status = response.status_code
            return response
        finally:
            admission.release()
            state.stats.end(status)

    return Route(path, run, methods=[endpoint.method])


def _control_routes(vendor: Vendor) -> list[BaseRoute]:
    state = vendor.state

    async def get_state(request: Request) -> Response:
        members = request.query_params.get("members", "").lower() in ("1", "true", "yes")
        return json_response(
            {
                "vendor": vendor.name,
                "stats": state.stats.summary(),
                "faults": state.faults.summary(),
                "config": state.tunable_values(),
                "data": state.summary(members=members),
            }
        )

    async def post_faults(request: Request) -> Response:
        try:
            data = json.loads(await request.body())
            items = data if isinstance(data, list) else [data]
            faults: list[Fault] = []
            for item in items:
                if isinstance(item, dict) and "reject" in item:
                    records = item["reject"]
                    if not isinstance(records, list) or not all(
                        isinstance(record, str) for record in records
                    ):
                        raise ValueError("reject is a list of emails or ids")
                    state.reject(*records, message=str(item.get("message", "rejected by the fake")))
                else:
                    faults.append(fault_from_json(item))
        except ValueError as error:
            return json_response({"error": str(error)}, 400)
        for fault in faults:
            state.faults.add(fault)
        return json_response(state.faults.summary(), 201)

    async def delete_faults(request: Request) -> Response:
        state.clear_faults()
        return no_content()

    async def patch_config(request: Request) -> Response:
        try:
            data = json.loads(await request.body())
            if not isinstance(data, dict):
                raise ValueError("send a JSON object of settings")
            state.set_tunables(data)
        except ValueError as error:
            return json_response({"error": str(error)}, 400)
        return json_response(state.tunable_values())

    async def delete_stats(request: Request) -> Response:
        state.stats.reset()
        return no_content()

    return [
        Route("/_fake/state", get_state, methods=["GET"]),
        Route("/_fake/faults", post_faults, methods=["POST"]),
        Route("/_fake/faults", delete_faults, methods=["DELETE"]),
        Route("/_fake/config", patch_config, methods=["PATCH"]),
        Route("/_fake/stats", delete_stats, methods=["DELETE"]),
    ]


def build_app(vendor: Vendor) -> Starlette:
    """A Starlette app serving `vendor`; `app.state.fake` is the vendor's state."""

    def not_found(call: Call) -> Response:
        request = call.request
        return vendor.error(404, f"no such resource: {request.method} {request.url.path}")

    # Unknown paths go through the same pipeline, so that they are counted, limited and
    # answered in the vendor's shape (SendGrid's rate-limit headers included).
    unmatched = [Endpoint(method, "/{path:path}", not_found) for method in ALL_METHODS]
    routes: list[BaseRoute] = [
        *_control_routes(vendor),
        *vendor.control_routes(),
        *(_route(vendor, endpoint) for endpoint in vendor.endpoints()),
        *(_route(vendor, endpoint, unmatched=True) for endpoint in unmatched),
    ]
    app = Starlette(routes=routes)
    app.state.fake = vendor.state
    return app

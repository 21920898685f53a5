"""Pure ASGI middleware (cheaper than BaseHTTPMiddleware on the hot path)."""

import time
from abc import ABC, abstractmethod
from collections.abc import MutableMapping
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from segment_api.problems import problem_response, unexpected_problem
from segments_shared.observability import correlation_id_var, new_correlation_id

REQUESTS = Counter(
    "segments_http_requests", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "segments_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)

CORRELATION_HEADERS = (b"x-correlation-id", b"x-request-id")


class HttpMiddleware(ABC):
    """Handles HTTP requests (only those of `method`, when set); anything else (lifespan
    events, other methods) passes through untouched."""

    method: str | None = None

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.method not in (None, scope["method"]):
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    @abstractmethod
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None: ...


class CorrelationMiddleware(HttpMiddleware):
    """Takes the caller's correlation id (or makes one), logs and events carry it, and the
    response returns it as `X-Correlation-ID`."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        correlation_id = None
        for name, value in scope["headers"]:
            if name in CORRELATION_HEADERS and value:
                correlation_id = value.decode("latin-1")[:128]
                break
        correlation_id = correlation_id or new_correlation_id()
        token = correlation_id_var.set(correlation_id)
        started = time.perf_counter()
        status = 500
        status_sent = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, status_sent
            if message["type"] == "http.response.start":
                status, status_sent = message["status"], True
                headers = list(message.get("headers", []))
                headers.append((b"x-correlation-id", correlation_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # An error no handler inside answered (Starlette leaves `Exception` to its
            # outermost middleware, outside this one): answered here, so that the 500
            # carries the correlation id in its body and header as every other answer.
            if status_sent:
                raise
            response = unexpected_problem(exc, scope["path"])
            await response(scope, receive, send_with_id)
        finally:
            route = _route_template(scope)
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            LATENCY.labels(scope["method"], route).observe(time.perf_counter() - started)
            correlation_id_var.reset(token)


def _route_template(scope: MutableMapping[str, Any]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


class _ContentNotWanted(Exception):
    """Stops a streamed response to a HEAD once its headers are out."""


class HeadMiddleware(HttpMiddleware):
    """HEAD is GET without the content (RFC 9110, section 9.3.2), which FastAPI's routes do
    not answer: the GET runs, and its status and headers (ETag, Content-Length) go back. A
    streamed body (a CSV download) is stopped at its first chunk rather than produced for
    nothing."""

    method = "HEAD"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        ended = False

        async def headers_only(message: Message) -> None:
            nonlocal ended
            if message["type"] != "http.response.body":
                await send(message)
                return
            if not ended:
                ended = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            if message.get("more_body", False):
                raise _ContentNotWanted

        # A copy: the server reads the method from its own scope to know that the response
        # has no content (sending a GET's would break the connection).
        inner = {**scope, "method": "GET"}
        try:
            await self.app(inner, receive, headers_only)
        except _ContentNotWanted:
            pass
        finally:
            # The route the router found, for the request metrics outside.
            if "route" in inner:
                scope["route"] = inner["route"]


class BodyLimitMiddleware(HttpMiddleware):
    """413 for bodies over the limit, checked on the declared length and on what arrives."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(413, f"the request body is larger than {self.max_bytes} bytes")
        await response(scope, receive, send)


class BodyTooLarge(HTTPException):
    """An HTTPException, because FastAPI turns other errors while reading a body into 400."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is larger than {max_bytes} bytes")

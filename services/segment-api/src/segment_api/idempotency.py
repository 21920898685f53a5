"""`Idempotency-Key` on POST (SPEC section 3): the same key with the same request within 24
hours answers the first response again and does nothing; with another request, 422.

Keys are scoped to the API key. A key is claimed in its own transaction before the request
runs, so a concurrent retry gets 409 instead of running twice; a 5xx answer releases the key
so the client can retry. (A crash between the request's commit and the storing of its answer
would let a retry run again; the window is one statement.)
"""

import asyncio
import contextlib
import hashlib
import json
import logging
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from segment_api.deps import ApiKeyCache
from segment_api.problems import problem_response

log = logging.getLogger(__name__)

HEADER = b"idempotency-key"
KEPT_HOURS = 24
REPLAYED_HEADERS = ("content-type", "location", "etag")

_CLAIM = text(
    """
    INSERT INTO idempotency_keys (api_key_id, key, method, path, request_hash)
    VALUES (:api_key_id, :key, :method, :path, :request_hash)
    ON CONFLICT (api_key_id, key) DO UPDATE
    SET method = EXCLUDED.method, path = EXCLUDED.path,
        request_hash = EXCLUDED.request_hash, status_code = NULL,
        response_headers = NULL, response_body = NULL, created_at = now()
    WHERE idempotency_keys.created_at < now() - make_interval(hours => :hours)
    RETURNING 1
    """
)
_FIND = text(
    "SELECT request_hash, status_code, response_headers, response_body FROM idempotency_keys "
    "WHERE api_key_id = :api_key_id AND key = :key"
)
_STORE = text(
    "UPDATE idempotency_keys SET status_code = :status, response_headers = "
    "CAST(:headers AS jsonb), response_body = :body "
    "WHERE api_key_id = :api_key_id AND key = :key"
)
_RELEASE = text("DELETE FROM idempotency_keys WHERE api_key_id = :api_key_id AND key = :key")
_PURGE = text(
    "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => :hours)"
)


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw_key = headers.get(HEADER)
        token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")[2].strip()
        if raw_key is None or not token:
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1")
        if not 1 <= len(key) <= 255 or not key.isprintable():
            await _header_error(scope, receive, send, "must be 1 to 255 printable characters")
            return
        engine: AsyncEngine = scope["app"].state.engine
        cache: ApiKeyCache = scope["app"].state.api_keys
        info = await cache.lookup(engine, token)
        if info is None:
            await self.app(scope, receive, send)  # the request itself answers 401
            return
        body, more = await _read_body(receive)
        digest = hashlib.sha256(
            b"%s %s?%s\n"
            % (scope["method"].encode(), scope["path"].encode(), scope.get("query_string", b""))
            + body
        ).digest()
        ids = {"api_key_id": info.id, "key": key}
        async with engine.begin() as conn:
            claimed = (
                await conn.execute(
                    _CLAIM,
                    {
                        **ids,
                        "method": scope["method"],
                        "path": scope["path"],
                        "request_hash": digest,
                        "hours": KEPT_HOURS,
                    },
                )
            ).first()
            existing = None if claimed else (await conn.execute(_FIND, ids)).first()
        if existing is not None:
            await _answer_existing(scope, receive, send, existing, digest)
            return
        await self._run_and_store(scope, body, more, send, engine, ids)

    async def _run_and_store(
        self,
        scope: Scope,
        body: bytes,
        more: Receive | None,
        send: Send,
        engine: AsyncEngine,
        ids: dict[str, Any],
    ) -> None:
        replayed = False

        async def replay_body() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await more() if more else {"type": "http.disconnect"}

        status = 500
        response_headers: dict[str, str] = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", []):
                    if name.decode("latin-1") in REPLAYED_HEADERS:
                        response_headers[name.decode("latin-1")] = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay_body, capture)
        finally:
            # Shielded: a client that disconnects must not leave the key claimed forever.
            await asyncio.shield(self._finish(engine, ids, status, response_headers, chunks))

    async def _finish(
        self,
        engine: AsyncEngine,
        ids: dict[str, Any],
        status: int,
        headers: dict[str, str],
        chunks: list[bytes],
    ) -> None:
        try:
            async with engine.begin() as conn:
                if status >= 500:
                    await conn.execute(_RELEASE, ids)
                else:
                    await conn.execute(
                        _STORE,
                        {
                            **ids,
                            "status": status,
                            "headers": json.dumps(headers),
                            "body": b"".join(chunks),
                        },
                    )
        except Exception:
            log.exception("could not record an idempotent response")


async def _read_body(receive: Receive) -> tuple[bytes, Receive | None]:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts), receive
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts), receive


async def _answer_existing(
    scope: Scope, receive: Receive, send: Send, existing: Any, digest: bytes
) -> None:
    if bytes(existing.request_hash) != digest:
        await _header_error(
            scope,
            receive,
            send,
            "this key was used with a different request in the last 24 hours",
        )
        return
    if existing.status_code is None:
        response = problem_response(
            409,
            "a request with this Idempotency-Key is still in progress; retry later",
            headers={"Retry-After": "1"},
        )
        await response(scope, receive, send)
        return
    headers = [(b"idempotent-replayed", b"true")] + [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in (existing.response_headers or {}).items()
    ]
    await send({"type": "http.response.start", "status": existing.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": bytes(existing.response_body or b"")})


async def _header_error(scope: Scope, receive: Receive, send: Send, detail: str) -> None:
    response = problem_response(
        422,
        f"Idempotency-Key: {detail}",
        errors=[{"header": "Idempotency-Key", "detail": detail}],
    )
    await response(scope, receive, send)


async def purge_expired_keys(engine: AsyncEngine, every_seconds: float = 600) -> None:
    """Forget keys after 24 hours."""
    while True:
        with contextlib.suppress(Exception):
            async with engine.begin() as conn:
                await conn.execute(_PURGE, {"hours": KEPT_HOURS})
        await asyncio.sleep(every_seconds)

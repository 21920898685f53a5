"""`Idempotency-Key` on POST (docs/contract.md#http-conventions): the same key with the same
request within 24 hours answers the first response again and does nothing; with another
request, 422.

Keys are scoped to the API key. A key is claimed in its own transaction before the request
runs, so a concurrent retry gets 409 instead of running twice; a 5xx answer releases the key
so the client can retry. (A crash between the request's commit and the storing of its answer
would let a retry run again; the window is one statement.)

A claim is a lease: while the request runs, its holder renews the claim every sixth of
`LEASE_SECONDS` (5 s). A claim left unanswered and unrenewed for longer was left by a holder
that died (a killed process, a lost connection), and the next retry takes it over instead of
answering 409 for a day. Each claim carries a token (kept in `response_headers` until there
is an answer), so a holder that was taken over can neither store its answer over the new
holder's claim nor release it.

When the database fails the request, it usually fails the release as well. The release (or
the storing of an answer) is then retried in the background with the suite's back-off, so
the key is free as soon as the database is back: the client's retry, told to wait by the 503's
`Retry-After`, runs instead of answering 409 until the lease runs out.
"""

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Message, Receive, Scope, Send

from segment_api.deps import ApiKeyCache
from segment_api.middleware import BodyTooLarge, HttpMiddleware
from segment_api.problems import database_problem, problem_response
from segments_shared.backoff import Backoff, BackoffPolicy

log = logging.getLogger(__name__)

HEADER = b"idempotency-key"
KEPT_HOURS = 24
REPLAYED_HEADERS = ("content-type", "location", "etag")
# An unanswered claim not renewed for this long was abandoned by its holder. A retry waits
# this long at most when the holder died; it must stay well above a renewal's worst wait (a
# renewal takes a connection from the request pool, SEGMENTS_DATABASE_POOL_TIMEOUT, 10 s by
# default), or a starved pool would let a retry run the request a second time.
LEASE_SECONDS = 30.0
# How long a failed release or store is retried before the lease is left to expire.
FINISH_RETRY_SECONDS = 60.0

# Takes the key if it is free, expired (24 hours after its answer), or abandoned.
_CLAIM = text(
    """
    INSERT INTO idempotency_keys
        (api_key_id, key, method, path, request_hash, response_headers)
    VALUES (:api_key_id, :key, :method, :path, :request_hash,
            jsonb_build_object('claim', CAST(:token AS text)))
    ON CONFLICT (api_key_id, key) DO UPDATE
    SET method = EXCLUDED.method, path = EXCLUDED.path,
        request_hash = EXCLUDED.request_hash, status_code = NULL,
        response_headers = EXCLUDED.response_headers, response_body = NULL, created_at = now()
    WHERE idempotency_keys.created_at < now() - make_interval(hours => :hours)
       OR (idempotency_keys.status_code IS NULL
           AND idempotency_keys.created_at < now() - make_interval(secs => :lease))
    RETURNING 1
    """
)
_HELD = "WHERE api_key_id = :api_key_id AND key = :key AND status_code IS NULL " + (
    "AND response_headers ->> 'claim' = :token"
)
_RENEW = text("UPDATE idempotency_keys SET created_at = now() " + _HELD)
_FIND = text(
    "SELECT request_hash, status_code, response_headers, response_body FROM idempotency_keys "
    "WHERE api_key_id = :api_key_id AND key = :key"
)
_STORE = text(
    "UPDATE idempotency_keys SET status_code = :status, response_headers = "
    "CAST(:headers AS jsonb), response_body = :body, created_at = now() " + _HELD
)
_RELEASE = text("DELETE FROM idempotency_keys " + _HELD)
_PURGE = text(
    "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => :hours)"
)


def request_digest(method: str, path: str, query: bytes, body: bytes) -> bytes:
    """What makes two requests "the same request" for a key."""
    return hashlib.sha256(b"%s %s?%s\n" % (method.encode(), path.encode(), query) + body).digest()


class IdempotencyMiddleware(HttpMiddleware):
    """Runs outside Starlette's exception middleware: what fails here (a body over the limit,
    the database gone) is answered here, with the same problem details as elsewhere."""

    method = "POST"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        raw_key = headers.get(HEADER)
        token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")[2].strip()
        if raw_key is None or not token or "\x00" in scope["path"]:
            # (A NUL in the path cannot be stored; the request answers 422 or 404 itself.)
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1")
        if not 1 <= len(key) <= 255 or not key.isprintable():
            await _header_error(scope, receive, send, "must be 1 to 255 printable characters")
            return
        try:
            claimed = await self._claim(scope, receive, token, key)
        except BodyTooLarge as exc:
            await problem_response(413, exc.detail)(scope, receive, send)
            return
        except Exception as exc:
            response = database_problem(exc, scope["path"])
            if response is None:
                raise
            await response(scope, receive, send)
            return
        if claimed is None:
            await self.app(scope, receive, send)  # the request itself answers 401
        elif isinstance(claimed, _Existing):
            await _answer_existing(scope, receive, send, claimed.row, claimed.digest)
        else:
            await self._run_and_store(scope, send, claimed)

    async def _claim(
        self, scope: Scope, receive: Receive, token: str, key: str
    ) -> "_Claim | _Existing | None":
        """Claims the key (None: the API key is unknown, the request answers 401 itself)."""
        engine: AsyncEngine = scope["app"].state.engine
        cache: ApiKeyCache = scope["app"].state.api_keys
        info = await cache.lookup(engine, token)
        if info is None:
            return None
        body, more = await _read_body(receive)
        digest = request_digest(
            scope["method"], scope["path"], scope.get("query_string", b""), body
        )
        ids = {"api_key_id": info.id, "key": key, "token": uuid.uuid4().hex}
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
                        "lease": LEASE_SECONDS,
                    },
                )
            ).first()
            existing = None if claimed else (await conn.execute(_FIND, ids)).first()
        if existing is not None:
            return _Existing(existing, digest)
        return _Claim(engine, ids, body, more)

    async def _run_and_store(self, scope: Scope, send: Send, claim: "_Claim") -> None:
        replayed = False

        async def replay_body() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": claim.body, "more_body": False}
            return await claim.more()

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

        renewing = asyncio.create_task(_renew(claim.engine, claim.ids), name="idempotency-lease")
        try:
            await self.app(scope, replay_body, capture)
        finally:
            renewing.cancel()
            # Shielded: a client that disconnects must not leave the key claimed. Should this
            # fail too, the claim is no longer renewed and a retry takes it over.
            await asyncio.shield(
                self._finish(claim.engine, claim.ids, status, response_headers, chunks)
            )

    async def _finish(
        self,
        engine: AsyncEngine,
        ids: dict[str, Any],
        status: int,
        headers: dict[str, str],
        chunks: list[bytes],
    ) -> None:
        if status >= 500:
            statement, params = _RELEASE, ids
        else:
            answer = {"status": status, "headers": json.dumps(headers), "body": b"".join(chunks)}
            statement, params = _STORE, {**ids, **answer}
        try:
            async with engine.begin() as conn:
                await conn.execute(statement, params)
        except Exception as exc:
            log.warning(
                "could not record an idempotent response, retrying in the background",
                extra={"status": status, "error": repr(exc)},
            )
            task = asyncio.create_task(_finish_later(engine, statement, params))
            _finishing.add(task)
            task.add_done_callback(_finishing.discard)


# Background retries of `_finish`, kept referenced until they end.
_finishing: set[asyncio.Task[None]] = set()


async def finish_pending(within: float = 2.0) -> None:
    """At shutdown, before the engine goes: give background releases a moment to land, then
    cancel the rest (their claims expire with their lease)."""
    if _finishing:
        _, pending = await asyncio.wait(set(_finishing), timeout=within)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _finish_later(engine: AsyncEngine, statement: Any, params: dict[str, Any]) -> None:
    """Retry a release or store until the database takes it. The claim's token makes a late
    one harmless: it cannot touch a claim another request took over meanwhile."""
    backoff = Backoff(BackoffPolicy(base=0.1, cap=2.0))
    deadline = asyncio.get_running_loop().time() + FINISH_RETRY_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(backoff.next_delay())
        try:
            async with engine.begin() as conn:
                await conn.execute(statement, params)
            return
        except Exception as exc:
            log.debug("idempotency record retry failed", extra={"error": repr(exc)})
    log.error("gave up recording an idempotent response; the claim's lease will expire")


class _Claim:
    """A key this request holds, with the body read to hash it."""

    def __init__(
        self, engine: AsyncEngine, ids: dict[str, Any], body: bytes, more: Receive
    ) -> None:
        self.engine = engine
        self.ids = ids
        self.body = body
        self.more = more


class _Existing:
    """The key's row when another request holds it or answered it."""

    def __init__(self, row: Any, digest: bytes) -> None:
        self.row = row
        self.digest = digest


async def _renew(engine: AsyncEngine, ids: dict[str, Any]) -> None:
    """Keep the claim alive while the request runs; a failed renewal is retried next time."""
    while True:
        await asyncio.sleep(LEASE_SECONDS / 6)
        try:
            async with engine.begin() as conn:
                await conn.execute(_RENEW, ids)
        except Exception as exc:
            log.warning("could not renew an idempotency claim", extra={"error": repr(exc)})


async def _read_body(receive: Receive) -> tuple[bytes, Receive]:
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
            instance=scope["path"],
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
        errors=[{"parameter": "Idempotency-Key", "detail": detail}],
        instance=scope["path"],
    )
    await response(scope, receive, send)


async def purge_expired_keys(engine: AsyncEngine, every_seconds: float = 600) -> None:
    """Forget keys after 24 hours."""
    while True:
        with contextlib.suppress(Exception):
            async with engine.begin() as conn:
                await conn.execute(_PURGE, {"hours": KEPT_HOURS})
        await asyncio.sleep(every_seconds)

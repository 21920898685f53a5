"""Request dependencies: the transaction (committed once, at the edge) and the API key."""

import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segment_api.events import SOURCE
from segment_api.problems import ProblemException
from segment_api.settings import ApiSettings
from segments_shared.apikeys import ApiKeyInfo, find_key
from segments_shared.changes import recording


async def _transaction(request: Request) -> AsyncIterator[AsyncConnection]:
    """One unit of work: what the request changed is recorded (`changes_of(conn)`) and its
    consequences written just before the commit (segments_shared/changes.py)."""
    engine: AsyncEngine = request.app.state.engine
    async with engine.begin() as conn, recording(conn, SOURCE):
        yield conn


async def _read_connection(request: Request) -> AsyncIterator[AsyncConnection]:
    engine: AsyncEngine = request.app.state.read_engine
    async with engine.connect() as conn:
        yield conn


# scope="function" commits before the response is sent: a failed commit is an error answer,
# never a 2xx for a change that was lost.
Db = Annotated[AsyncConnection, Depends(_transaction, scope="function")]
# Reads that need no transaction: one statement, one round trip, no BEGIN/COMMIT.
ReadDb = Annotated[AsyncConnection, Depends(_read_connection, scope="function")]
# A write done in one statement (atomic by itself), committed when it returns.
OneStatementDb = ReadDb


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


Settings = Annotated[ApiSettings, Depends(get_settings)]


class ApiKeyCache:
    """Keys looked up by digest, cached briefly: a revocation takes effect within the TTL."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        self._entries: dict[str, tuple[float, ApiKeyInfo | None]] = {}

    async def lookup(self, engine: AsyncEngine, key: str) -> ApiKeyInfo | None:
        now = time.monotonic()
        cached = self._entries.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with engine.connect() as conn:
            info = await find_key(conn, key)
        if len(self._entries) > 10_000:
            self._entries.clear()  # bounded: unknown keys must not grow memory forever
        self._entries[key] = (now + self.ttl, info)
        return info


def _unauthenticated(detail: str) -> ProblemException:
    return ProblemException(401, detail, headers={"WWW-Authenticate": 'Bearer realm="segments"'})


# The `bearer` security scheme of the OpenAPI document, which every operation taking a key
# declares with the scope it needs (Swagger UI's Authorize button). It refuses nothing itself
# (auto_error=False): `require` answers 401 and 403 as problem details.
BEARER = HTTPBearer(
    scheme_name="bearer",
    bearerFormat="API key",
    description="An API key: `Authorization: Bearer <key>`. `segments-admin create-key "
    "--name N --scopes S,...` prints one; the scopes are `segments:read`, `segments:write`, "
    "`syncs:write` and `admin` (which holds every scope).",
    auto_error=False,
)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


def require(scope: str) -> Callable[..., Coroutine[Any, Any, ApiKeyInfo]]:
    """A dependency admitting API keys that hold `scope` (admin holds every scope)."""

    async def check(request: Request, _declared: Bearer) -> ApiKeyInfo:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise _unauthenticated("send an API key as 'Authorization: Bearer <key>'")
        cache: ApiKeyCache = request.app.state.api_keys
        info = await cache.lookup(request.app.state.engine, key.strip())
        if info is None:
            raise _unauthenticated("the API key is unknown or revoked")
        if not info.allows(scope):
            raise ProblemException(403, f"the API key lacks the '{scope}' scope")
        request.state.api_key = info
        return info

    return check


def _key(scope: str) -> Any:
    """A key holding `scope`; the document lists the scope in the operation's requirement."""
    return Security(require(scope), scopes=[scope])


ReadKey = Annotated[ApiKeyInfo, _key("segments:read")]
WriteKey = Annotated[ApiKeyInfo, _key("segments:write")]
SyncKey = Annotated[ApiKeyInfo, _key("syncs:write")]
AdminKey = Annotated[ApiKeyInfo, _key("admin")]

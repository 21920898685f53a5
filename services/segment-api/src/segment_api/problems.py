"""RFC 9457 problem details for every error the API answers (docs/contract.md#http-conventions)."""

import logging
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from segment_api.allowed import allowed, wrong_method
from segments_shared.db.errors import is_transient
from segments_shared.observability import current_correlation_id

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
# deadlock_detected, serialization_failure: the transaction was rolled back, retry is safe.
RETRYABLE_STATES = frozenset({"40P01", "40001"})
# character_not_in_repertoire: a NUL (or another character PostgreSQL cannot store) that got
# past the checks on the way in. Still bad input, never a 500.
UNSTORABLE_CHARACTER = "22021"
PROBLEM_BASE = "https://segments.dev/problems/"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    428: "Precondition Required",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TYPES = {
    400: "malformed-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    412: "precondition-failed",
    413: "body-too-large",
    422: "validation-error",
    500: "internal-error",
    503: "unavailable",
}


class ProblemError(BaseModel):
    """One invalid field: a JSON pointer into the body, or the name of a query, path or
    header parameter (headers are parameters in OpenAPI too)."""

    pointer: str | None = None
    parameter: str | None = None
    detail: str


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[ProblemError] | None = None
    correlation_id: str | None = None


class ProblemException(Exception):
    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        errors: list[dict[str, str]] | None = None,
        problem_type: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.problem_type = problem_type
        self.title = title
        self.headers = headers


def field_error(pointer: str, detail: str) -> ProblemException:
    return ProblemException(422, detail, errors=[{"pointer": pointer, "detail": detail}])


def parameter_error(parameter: str, detail: str) -> ProblemException:
    return ProblemException(422, detail, errors=[{"parameter": parameter, "detail": detail}])


def not_found(what: str, identifier: object) -> ProblemException:
    return ProblemException(404, f"{what} {identifier} does not exist")


def repeat_errors(
    values: Sequence[Hashable], pointer: Callable[[int], str], says: str
) -> list[dict[str, str]]:
    """One error per item whose value an earlier item has, at the item's `pointer`: `says`
    and the pointer of the first item with the value."""
    first: dict[Hashable, int] = {}
    errors = []
    for index, value in enumerate(values):
        if value in first:
            errors.append({"pointer": pointer(index), "detail": f"{says} {pointer(first[value])}"})
        else:
            first[value] = index
    return errors


def problem_response(
    status: int,
    detail: str | None = None,
    *,
    errors: list[dict[str, Any]] | None = None,
    problem_type: str | None = None,
    title: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + (problem_type or _TYPES.get(status, "error")),
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    correlation_id = current_correlation_id()
    if correlation_id:
        body["correlation_id"] = correlation_id
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _escape(part: object) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


_MISSING = object()


def _describe(error: dict[str, Any], body: Any = _MISSING) -> dict[str, Any]:
    location = list(error.get("loc", ()))
    source = location[0] if location else "body"
    message = str(error.get("msg", "invalid value"))
    if source == "body":
        path = _body_path(location[1:], body, error.get("type") == "missing")
        return {"pointer": "".join("/" + _escape(part) for part in path), "detail": message}
    name = str(location[1]) if len(location) > 1 else ""
    return {"parameter": name, "detail": message}


def _body_path(location: list[Any], body: Any, missing: bool) -> list[Any]:
    """The part of pydantic's location that is a path in the body. Pydantic inserts the name
    of each union member it tried (`bool`, `constrained-int`, a model's name, a tag); walking
    the body tells them from keys and indexes. Without the body, only the names pydantic
    builds (with brackets, or `function-...`) can be told apart."""
    if body is _MISSING:
        return [part for part in location if not _is_union_tag(part)]
    path = []
    node = body
    last = len(location) - 1
    for index, part in enumerate(location):
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif not (missing and index == last):
            continue  # the name of a union member; a missing field's name ends the pointer
        path.append(part)
    return path


def _is_union_tag(part: object) -> bool:
    """Pydantic inserts the name of the union member it tried; it is not part of the body."""
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def validation_problem(
    errors: list[dict[str, Any]], instance: str | None = None, body: Any = _MISSING
) -> Response:
    """One entry per invalid field (docs/contract.md#http-conventions): errors pydantic
    reports for several union members at one place in the body become one entry."""
    merged: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for error in errors:
        item = _describe(error, body)
        place = tuple((name, value) for name, value in item.items() if name != "detail")
        if place not in merged:
            merged[place] = item
        elif item["detail"] not in merged[place]["detail"].split(" or "):
            merged[place]["detail"] += " or " + item["detail"]
    unique = list(merged.values())
    detail = "; ".join(
        f"{item.get('pointer') or item.get('parameter') or '/'}: {item['detail']}"
        for item in unique[:5]
    )
    return problem_response(422, detail, errors=unique, instance=instance)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemException)
    async def _problem(request: Request, exc: ProblemException) -> Response:
        return problem_response(
            exc.status,
            exc.detail,
            errors=exc.errors,
            problem_type=exc.problem_type,
            title=exc.title,
            instance=request.url.path,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = list(exc.errors())
        allow = wrong_method(app, request, errors)
        if allow is not None:
            return problem_response(
                405, "Method Not Allowed", instance=request.url.path, headers={"Allow": allow}
            )
        if any(error.get("type") == "json_invalid" for error in errors):
            return problem_response(
                400,
                "the request body is not valid JSON",
                problem_type="malformed-json",
                instance=request.url.path,
            )
        return validation_problem(errors, request.url.path, exc.body)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else None
        headers = dict(exc.headers) if exc.headers else None
        allow = allowed(app, request) if exc.status_code == 405 else None
        if allow:
            headers = {**(headers or {}), "Allow": allow}
        return problem_response(exc.status_code, detail, instance=request.url.path, headers=headers)

    @app.exception_handler(asyncpg.PostgresError)
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(DBAPIError)
    @app.exception_handler(OSError)
    @app.exception_handler(PoolTimeout)
    async def _database(request: Request, exc: Exception) -> Response:
        response = database_problem(exc, request.url.path)
        return response if response is not None else await _unexpected(request, exc)

    async def _unexpected(request: Request, exc: Exception) -> Response:
        return unexpected_problem(exc, request.url.path)


def unexpected_problem(exc: BaseException, instance: str) -> Response:
    """The 500 for an error nothing else answered, logged with its traceback."""
    log.error("unhandled error", exc_info=exc, extra={"path": instance})
    return problem_response(
        500,
        "an unexpected error occurred; quote the correlation id when reporting it",
        instance=instance,
    )


def _sqlstate(exc: BaseException) -> str | None:
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    else:
        state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) else None


def unavailable_problem(exc: BaseException, instance: str | None = None) -> Response | None:
    """The 503 for a database that is unreachable, lost, or aborted the transaction to let a
    concurrent one finish; None for any other error."""
    state = _sqlstate(exc) if isinstance(exc, DBAPIError | asyncpg.PostgresError) else None
    if state in RETRYABLE_STATES:
        # PostgreSQL aborted this transaction to let a concurrent one finish; nothing of it
        # was kept, and the same request will most likely succeed now.
        log.warning("transaction aborted by a concurrent one", extra={"sqlstate": state})
        return _retry_after(
            1,
            "a concurrent change got in the way; nothing was changed, retry the request",
            instance,
        )
    if isinstance(exc, DBAPIError) and (
        exc.connection_invalidated or isinstance(exc.orig, OSError)
    ):
        log.warning("database connection lost", extra={"path": instance})
        return _retry_after(1, "the database connection was lost; retry the request", instance)
    if isinstance(exc, PoolTimeout):
        # Every pooled connection stayed busy for SEGMENTS_DATABASE_POOL_TIMEOUT: the database
        # is slow or the load is more than it serves; nothing of this request ran.
        log.warning("no database connection free in time", extra={"path": instance})
        return _retry_after(2, "the service is busy; nothing was changed, retry later", instance)
    if isinstance(exc, TimeoutError):
        # asyncpg's command timeout (SEGMENTS_DATABASE_COMMAND_TIMEOUT): the transaction
        # was abandoned and its connection closed.
        log.warning("database statement timed out", extra={"path": instance})
        return _retry_after(5, "the database did not answer in time; nothing was changed", instance)
    if isinstance(exc, OSError):
        log.warning("database unreachable", extra={"path": instance, "error": repr(exc)})
        return _retry_after(5, "the database is unreachable", instance)
    if is_transient(exc):
        # Raw asyncpg on the hot paths: a connection terminated by a restart (57P01, class
        # 08), a server still starting (57P03), or one already closed under us.
        log.warning("database unavailable", extra={"path": instance, "error": repr(exc)})
        return _retry_after(2, "the database is unavailable; retry the request", instance)
    return None


def _retry_after(seconds: int, detail: str, instance: str | None) -> Response:
    """A 503 telling the client when to try again."""
    return problem_response(503, detail, instance=instance, headers={"Retry-After": str(seconds)})


def database_problem(exc: BaseException, instance: str | None = None) -> Response | None:
    """The answer to a database error that is not the server's fault (503 or 422), or None."""
    if isinstance(exc, DBAPIError | asyncpg.PostgresError):
        if _sqlstate(exc) == UNSTORABLE_CHARACTER:
            log.warning("a value the database cannot store", extra={"path": instance})
            return problem_response(
                422,
                "a value contains a character that cannot be stored (such as NUL)",
                errors=[],
                instance=instance,
            )
    return unavailable_problem(exc, instance)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries declaring the problem-details answers of an operation."""
    descriptions = {
        400: "The body is not valid JSON",
        401: "No API key, or an unknown or revoked one",
        403: "The API key lacks the required scope",
        404: "The resource does not exist",
        409: "The request conflicts with the resource's state",
        412: "If-Match does not match the current version",
        413: "The body is larger than 10 MiB",
        422: "Invalid input; `errors` names each invalid field",
        503: "A dependency is unavailable",
    }
    return {
        status: {
            "description": descriptions.get(status, _TITLES.get(status, "Error")),
            "model": Problem,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }

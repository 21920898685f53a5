"""RFC 9457 problem details for every error the API answers (SPEC section 3)."""

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from segments_shared.observability import current_correlation_id

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
# deadlock_detected, serialization_failure: the transaction was rolled back, retry is safe.
RETRYABLE_STATES = frozenset({"40P01", "40001"})
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
    """One invalid field: a JSON pointer into the body, or a query parameter."""

    pointer: str | None = None
    parameter: str | None = None
    header: str | None = None
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


def _describe(error: dict[str, Any]) -> dict[str, Any]:
    location = list(error.get("loc", ()))
    source = location[0] if location else "body"
    message = str(error.get("msg", "invalid value"))
    if source == "body":
        path = [part for part in location[1:] if not _is_union_tag(part)]
        return {"pointer": "".join("/" + _escape(part) for part in path), "detail": message}
    name = str(location[1]) if len(location) > 1 else ""
    if source == "header":
        return {"header": name, "detail": message}
    return {"parameter": name, "detail": message}


def _is_union_tag(part: object) -> bool:
    """Pydantic inserts the name of the union member it tried; it is not part of the body."""
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def validation_problem(errors: list[dict[str, Any]], instance: str | None = None) -> Response:
    described = [_describe(error) for error in errors]
    unique = list({repr(item): item for item in described}.values())
    detail = "; ".join(
        f"{item.get('pointer') or item.get('parameter') or item.get('header') or '/'}: "
        f"{item['detail']}"
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
        if any(error.get("type") == "json_invalid" for error in errors):
            return problem_response(
                400,
                "the request body is not valid JSON",
                problem_type="malformed-json",
                instance=request.url.path,
            )
        return validation_problem(errors, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else None
        headers = dict(exc.headers) if exc.headers else None
        return problem_response(exc.status_code, detail, instance=request.url.path, headers=headers)

    @app.exception_handler(asyncpg.PostgresError)
    async def _postgres(request: Request, exc: asyncpg.PostgresError) -> Response:
        return await _database_error(request, exc, getattr(exc, "sqlstate", None))

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> Response:
        state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if state in RETRYABLE_STATES:
            return await _database_error(request, exc, state)
        if exc.connection_invalidated or isinstance(exc.orig, OSError):
            log.warning("database connection lost", extra={"path": request.url.path})
            return problem_response(
                503,
                "the database connection was lost; retry the request",
                instance=request.url.path,
                headers={"Retry-After": "1"},
            )
        return await _unexpected(request, exc)

    async def _database_error(request: Request, exc: Exception, state: str | None) -> Response:
        if state in RETRYABLE_STATES:
            # PostgreSQL aborted this transaction to let a concurrent one finish; nothing of
            # it was kept, and the same request will most likely succeed now.
            log.warning("transaction aborted by a concurrent one", extra={"sqlstate": state})
            return problem_response(
                503,
                "a concurrent change got in the way; nothing was changed, retry the request",
                instance=request.url.path,
                headers={"Retry-After": "1"},
            )
        return await _unexpected(request, exc)

    @app.exception_handler(OSError)
    async def _unreachable(request: Request, exc: OSError) -> Response:
        log.warning("database unreachable", extra={"path": request.url.path, "error": repr(exc)})
        return problem_response(
            503,
            "the database is unreachable",
            instance=request.url.path,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
        return problem_response(
            500,
            "an unexpected error occurred; quote the correlation id when reporting it",
            instance=request.url.path,
        )


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

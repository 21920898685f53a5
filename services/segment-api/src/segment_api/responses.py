"""What the routers declare and set on their answers: the problem answers of each operation in
the OpenAPI document, the ETag of a versioned resource (and 304 for a client whose copy is
current), and the Location of a new one."""

import uuid
from typing import Any, Protocol, TypeVar

from fastapi import Request, Response, status

from segment_api.openapi import header
from segment_api.problems import problem_responses

# Every operation checks the API key (401, 403) and validates its parameters (422).
EVERY_OPERATION = (401, 403, 422)
# An operation that reads a body can also get one that is not JSON (400) or too large (413).
WITH_BODY = (400, 413)


def answers(*statuses: int, body: bool = False) -> dict[int | str, dict[str, Any]]:
    """The problem answers an operation declares: those of every operation, those of a body
    when it reads one, and `statuses`; in ascending order, as the document lists them."""
    declared = {*EVERY_OPERATION, *statuses, *(WITH_BODY if body else ())}
    return problem_responses(*sorted(declared))


def tagged_answer(status: int = 200, *, location: bool = False) -> dict[int | str, dict[str, Any]]:
    """The success answer of an operation answering a versioned resource (`tagged`,
    `created`): its ETag header, and the Location of a new one."""
    headers = {"ETag": header("ETag"), **({"Location": header("Location")} if location else {})}
    return {status: {"headers": headers}}


# The answer of a GET whose `If-None-Match` lists the current ETag (`unless_modified`).
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {
        "description": "Not Modified: `If-None-Match` lists the current ETag; no body",
        "headers": {"ETag": header("ETag")},
    }
}


def upsert_answers(model: type[Any]) -> dict[int | str, dict[str, Any]]:
    """The answers of a PUT that creates (201, with the resource) or updates (200)."""
    return {
        201: {"model": model, "description": "Created"},
        200: {"description": "Updated"},
        **answers(body=True),
    }


class Versioned(Protocol):
    @property
    def id(self) -> uuid.UUID: ...

    @property
    def version(self) -> int: ...


V = TypeVar("V", bound=Versioned)
T = TypeVar("T")


def etag(version: int) -> str:
    return f'"{version}"'


def tagged(response: Response, resource: V) -> V:
    """The resource, its version set as the answer's ETag (what If-Match is checked against)."""
    response.headers["ETag"] = etag(resource.version)
    return resource


def _entity_tags(header_value: str) -> set[str]:
    """The entity tags a conditional header lists, compared weakly (RFC 9110, 13.1.2)."""
    return {tag.strip().removeprefix("W/") for tag in header_value.split(",")}


def unless_modified(response: Response, resource: V, if_none_match: str | None) -> V | Response:
    """The resource with its ETag (`tagged`), or 304 without a body when `If-None-Match` lists
    that ETag (or is `*`): the client's copy is current."""
    tag = etag(resource.version)
    if if_none_match is not None and {tag, "*"} & _entity_tags(if_none_match):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": tag})
    return tagged(response, resource)


def created(request: Request, response: Response, resource: V, route: str, parameter: str) -> V:
    """The resource of a 201, with its ETag and its Location: the URL of the operation named
    `route`, the resource's id as its path `parameter`."""
    response.headers["Location"] = str(request.url_for(route, **{parameter: resource.id}))
    return tagged(response, resource)


def upserted(response: Response, resource: T, was_created: bool) -> T:
    """The resource of a PUT: 201 when it created it, the route's 200 when it updated it."""
    if was_created:
        response.status_code = status.HTTP_201_CREATED
    return resource

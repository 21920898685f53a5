"""The methods a path answers, for a 405's `Allow` (RFC 9110 asks for all of them), read from
the OpenAPI document, the routes' public description. Starlette names only those of the
first route matching the path, and here each method of a path has a route of its own."""

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from starlette.routing import compile_path


@dataclass(frozen=True)
class _Template:
    pattern: re.Pattern[str]
    methods: tuple[str, ...]
    # Parameters that take only a UUID: `/v1/segments/preview` is not `{segment_id}`, where
    # `/v1/customers/bulk` may well be `{external_id}`.
    uuids: tuple[str, ...]

    def accepts(self, path: str) -> bool:
        found = self.pattern.fullmatch(path)
        return found is not None and all(_is_uuid(found[name]) for name in self.uuids)


def allowed(app: FastAPI, request: Request) -> str | None:
    """Every method of the paths that take this one, with HEAD wherever GET is (middleware.
    HeadMiddleware answers it); None if the document describes no such path."""
    path = _route_path(request)
    methods = {
        method.upper()
        for template in _templates(app)
        if template.accepts(path)
        for method in template.methods
    }
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods)) or None


def wrong_method(app: FastAPI, request: Request, errors: Sequence[dict[str, Any]]) -> str | None:
    """The `Allow` of a 405 for a request that reached a route only because a parameter of its
    path matched the text (PATCH `/v1/segments/preview` reaches PATCH
    `/v1/segments/{segment_id}`, and the id is invalid) when the path is another resource,
    which lacks the method. None if that is not so: the validation error stands."""
    if not any(error.get("loc", ("",))[0] == "path" for error in errors):
        return None
    methods = allowed(app, request)
    if methods is None or request.method in methods.split(", "):
        return None
    return methods


def _route_path(request: Request) -> str:
    """The path the routes see: without the root path a proxy mounts the API under."""
    path, root = request.url.path, request.scope.get("root_path", "")
    if root and path.startswith(root + "/"):
        return path[len(root) :]
    return path


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _uuid_parameters(operations: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    return tuple(
        sorted(
            {
                parameter["name"]
                for operation in operations
                for parameter in operation.get("parameters", [])
                if parameter["in"] == "path" and parameter["schema"].get("format") == "uuid"
            }
        )
    )


def _templates(app: FastAPI) -> list[_Template]:
    templates: list[_Template] | None = getattr(app.state, "path_templates", None)
    if templates is None:
        templates = [
            _Template(
                compile_path(path)[0],
                tuple(item),
                _uuid_parameters(item.values()),
            )
            for path, item in app.openapi().get("paths", {}).items()
        ]
        app.state.path_templates = templates
    return templates

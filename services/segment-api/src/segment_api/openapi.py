"""The OpenAPI document and the pages that show it (SPEC section 3,
docs/contract.md#http-conventions): what FastAPI derives from the routes, plus what the
routes cannot say themselves: the problem answers every operation can give, the response
headers the middleware sets, the server and the licence. Swagger UI (`/docs`) and ReDoc
(`/redoc`) load their scripts from this server, never from a CDN.

`python -m segment_api.print_openapi` prints the document (`make lint` checks it with
Redocly)."""

import importlib.resources
import json
import re
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import GetJsonSchemaHandler, TypeAdapter
from pydantic.json_schema import JsonSchemaValue, models_json_schema
from pydantic_core import CoreSchema, core_schema

from segment_api.problems import PROBLEM_MEDIA_TYPE, Problem


def schema_of(shape: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
    """The JSON schema of `shape` (a type), its models registered in the document. A model is
    passed as a definition and a reference to it: given the model itself, the handler would
    inline its fields and skip its own `__get_pydantic_json_schema__`."""
    schema = TypeAdapter(shape).core_schema
    if "ref" in schema:
        schema = core_schema.definitions_schema(
            core_schema.definition_reference_schema(schema["ref"]), [schema]
        )
    return handler(schema)


@dataclass(frozen=True)
class PublishedAs:
    """A field validated as its type says (or later, by a parser) but published as the schema
    of `shape`: a segment's definition is a dict to the code, whose 422s come from the rule
    parser, and a tagged union to the document's readers."""

    shape: Any

    def __get_pydantic_json_schema__(
        self, _: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return schema_of(self.shape, handler)


def header(name: str) -> dict[str, str]:
    """A reference to one of HEADERS, for a response's `headers`."""
    return {"$ref": f"#/components/headers/{name}"}


# The response headers the API sets, declared once under components.
HEADERS: dict[str, dict[str, Any]] = {
    "ETag": {
        "description": "The resource's `version` as a strong entity tag. Send it back in "
        "`If-Match` to change the resource only if nobody else has (412 otherwise), or in "
        "`If-None-Match` to read it only if it changed (304 otherwise).",
        "required": True,
        "schema": {"type": "string", "pattern": '^"[0-9]+"$', "examples": ['"3"']},
    },
    "Location": {
        "description": "The URL of the resource created",
        "required": True,
        "schema": {"type": "string", "format": "uri"},
    },
    "Idempotent-Replayed": {
        "description": "`true` on the stored answer to an earlier request with the same "
        "`Idempotency-Key`, sent again instead of doing the work twice",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "X-Correlation-ID": {
        "description": "The request's correlation id: the caller's `X-Correlation-ID` (or "
        "`X-Request-ID`) if it sent one, else a new one. Logs and the events the request "
        "causes carry it; quote it when reporting a problem.",
        "required": True,
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "string", "pattern": "^[0-9]+$", "examples": ["5"]},
    },
    "WWW-Authenticate": {
        "description": "The scheme to authenticate with",
        "schema": {"type": "string", "examples": ['Bearer realm="segments"']},
    },
}
# Headers of error answers, by status.
PROBLEM_HEADERS = {
    "401": ("WWW-Authenticate",),
    "409": ("Retry-After",),
    "412": ("ETag",),
    "503": ("Retry-After",),
}

IDEMPOTENCY_KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Retrying with the same key and body within 24 hours answers the first "
    "response again and does nothing; with another body, 422; while the first request still "
    "runs, 409.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}


def _problem_answer(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


# Answers any operation can give, whatever its route declares (the document declares every
# error status, docs/contract.md#http-conventions): 503 wherever the database is used, and on
# every POST what the idempotency middleware answers.
COMMON_ANSWERS = {
    "503": _problem_answer(
        "The database is unreachable, or a concurrent change got in the way (deadlock, "
        "serialization failure); nothing was changed, retry after `Retry-After`"
    )
}
POST_ANSWERS = {
    "409": _problem_answer(
        "The request conflicts with the resource's state, or a request with the same "
        "Idempotency-Key is still in progress"
    ),
    "422": _problem_answer("Invalid input; `errors` names each invalid field"),
}

SERVERS = [{"url": "/", "description": "The server answering this document"}]
# No licence is granted: the API is the product's own (an SPDX reference of our own).
LICENSE = {"name": "Proprietary", "identifier": "LicenseRef-Proprietary"}


def _a_copy(value: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(value))
    return copied


def _declare_answers(schema: dict[str, Any]) -> None:
    """Every `/v1` operation: the answers any operation can give, the `Idempotency-Key` of
    every POST, and on every answer the headers the middleware sets."""
    for path, item in schema.get("paths", {}).items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in item.items():
            answers = {**COMMON_ANSWERS, **(POST_ANSWERS if method == "post" else {})}
            for status, answer in answers.items():
                operation["responses"].setdefault(status, _a_copy(answer))
            if method == "post":
                operation.setdefault("parameters", []).append(IDEMPOTENCY_KEY_PARAMETER)
            for status, response in operation["responses"].items():
                headers = response.setdefault("headers", {})
                for name in PROBLEM_HEADERS.get(status, ()):
                    headers.setdefault(name, header(name))
                # Any answer but a 5xx is stored, and replayed to a retry with the same key.
                if method == "post" and not status.startswith("5"):
                    headers["Idempotent-Replayed"] = header("Idempotent-Replayed")
                headers["X-Correlation-ID"] = header("X-Correlation-ID")


def _declare_components(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {})
    _, problem_schemas = models_json_schema(
        [(Problem, "validation")], ref_template="#/components/schemas/{model}"
    )
    components.setdefault("schemas", {}).update(problem_schemas["$defs"])
    components["headers"] = HEADERS


# pydantic names the schema of `Page[Segment]` `Page_Segment_`.
_PAGE = re.compile(r"^Page_(\w+)_$")
_SCHEMAS = "#/components/schemas/"


def _with_refs_renamed(node: Any, refs: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            key: refs.get(value, value) if key == "$ref" else _with_refs_renamed(value, refs)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_with_refs_renamed(item, refs) for item in node]
    return node


def _name_pages(schema: dict[str, Any]) -> dict[str, Any]:
    """`SegmentPage` for pydantic's `Page_Segment_`: generated clients name classes after
    schemas."""
    schemas = schema["components"]["schemas"]
    names = {name: f"{found[1]}Page" for name in schemas if (found := _PAGE.match(name))}
    for old, new in names.items():
        schemas[new] = {**schemas.pop(old), "title": new}
    refs = {_SCHEMAS + old: _SCHEMAS + new for old, new in names.items()}
    renamed: dict[str, Any] = _with_refs_renamed(schema, refs)
    return renamed


def document_api(app: FastAPI) -> None:
    """Build `app`'s document with what the routes cannot declare themselves."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = _name_pages(original())
            schema["info"]["license"] = LICENSE
            schema["servers"] = SERVERS
            _declare_components(schema)
            _declare_answers(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# Swagger UI and ReDoc, as a Python package ships them (fastapi-offline): the pages work
# without the Internet, and the Docker image has them.
ASSETS = importlib.resources.files("fastapi_offline").joinpath("static")
ASSETS_PATH = "/docs/assets"


def serve_doc_pages(app: FastAPI) -> None:
    """`/docs` (Swagger UI) and `/redoc`, their scripts and styles served by `app` itself.
    Create the app with `docs_url=None, redoc_url=None`."""
    app.mount(ASSETS_PATH, StaticFiles(directory=str(ASSETS)), name="doc-assets")

    def urls(request: Request) -> tuple[str, str]:
        root = request.scope.get("root_path", "")
        return f"{root}{app.openapi_url}", f"{root}{ASSETS_PATH}"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        document, assets = urls(request)
        return get_swagger_ui_html(
            openapi_url=document,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
            oauth2_redirect_url=None,
            # No badge fetched from swagger.io's online validator.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        document, assets = urls(request)
        return get_redoc_html(
            openapi_url=document,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,
        )

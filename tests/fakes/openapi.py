"""Request validation against the vendors' official OpenAPI documents.

The documents stay in `../shared/vendor-specs` beside the repository (or wherever
`SEGMENTS_VENDOR_SPECS_DIR` points); nothing here copies them. Each operation is compiled once
per process, on first use, into parameter and body checks (see `schema.py`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema.exceptions import best_match
from openapi_schema_validator import (
    OAS30Validator,
    OAS31Validator,
    oas30_format_checker,
    oas31_format_checker,
)
from starlette.datastructures import Headers, QueryParams

from tests.fakes.schema import Check, Failure, SchemaCompiler, UnsupportedSchema, pointer

SPECS_DIR_VARIABLE = "SEGMENTS_VENDOR_SPECS_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]

logger = logging.getLogger("tests.fakes")


def specs_dir() -> Path:
    """Where the vendor documents are expected: the variable, else `../shared/vendor-specs`."""
    configured = os.environ.get(SPECS_DIR_VARIABLE)
    if configured:
        return Path(configured)
    return REPO_ROOT.parent / "shared" / "vendor-specs"


def specs_available() -> bool:
    return specs_dir().is_dir()


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a request does not match its operation; `pointer` is into the body."""

    message: str
    pointer: str | None = None
    parameter: str | None = None


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    location: str
    required: bool
    schema: Mapping[str, Any]
    explode: bool
    check: Check


class Operation:
    """The compiled checks of one OpenAPI operation."""

    def __init__(
        self,
        parameters: list[Parameter],
        body_required: bool,
        media: dict[str, Check],
    ) -> None:
        self.parameters = parameters
        self.body_required = body_required
        self.media = media

    def validate(
        self,
        *,
        path_params: Mapping[str, str],
        query: QueryParams,
        headers: Headers,
        body: Any,
        has_body: bool,
    ) -> Problem | None:
        for parameter in self.parameters:
            problem = _check_parameter(parameter, path_params, query, headers)
            if problem is not None:
                return problem
        if not self.media:
            return None
        if not has_body:
            if self.body_required:
                return Problem("a request body is required", pointer="")
            return None
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        check = self.media.get(content_type) or self.media.get("*/*")
        if check is None:
            expected = ", ".join(sorted(self.media))
            return Problem(f"content type {content_type!r} is not accepted; send {expected}")
        failure = check(body)
        if failure is None:
            return None
        return Problem(failure[1], pointer=pointer(failure))


def _check_parameter(
    parameter: Parameter,
    path_params: Mapping[str, str],
    query: QueryParams,
    headers: Headers,
) -> Problem | None:
    raw: list[str]
    if parameter.location == "path":
        raw = [path_params[parameter.name]] if parameter.name in path_params else []
    elif parameter.location == "query":
        raw = query.getlist(parameter.name)
    elif parameter.location == "header":
        raw = headers.getlist(parameter.name)
    else:
        return None  # cookies: none of the vendors' operations we serve use them
    if not raw:
        if parameter.required:
            return Problem(
                f"{parameter.location} parameter {parameter.name!r} is required",
                parameter=parameter.name,
            )
        return None
    value = _coerce(raw, parameter.schema, explode=parameter.explode)
    failure = parameter.check(value)
    if failure is None:
        return None
    return Problem(
        f"{parameter.location} parameter {parameter.name!r}: {failure[1]}",
        parameter=parameter.name,
    )


_INTEGER = re.compile(r"-?\d+")


def _coerce_one(raw: str, schema: Mapping[str, Any]) -> Any:
    kind = schema.get("type")
    if kind == "integer" and _INTEGER.fullmatch(raw):
        return int(raw)
    if kind == "number":
        try:
            return float(raw)
        except ValueError:
            return raw
    if kind == "boolean" and raw in ("true", "false"):
        return raw == "true"
    return raw


def _coerce(raw: list[str], schema: Mapping[str, Any], *, explode: bool) -> Any:
    """Turn the strings of a query, path or header parameter into the schema's types."""
    if schema.get("type") == "array":
        items = raw if explode else [part for value in raw for part in value.split(",")]
        item_schema = schema.get("items", {})
        return [_coerce_one(item, item_schema) for item in items]
    return _coerce_one(raw[0], schema)


@functools.cache
def load_document(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        document: dict[str, Any] = json.load(handle)
    return document


@functools.cache
def _compiler(path: Path) -> SchemaCompiler:
    document = load_document(path)
    return SchemaCompiler(document, oas30=str(document.get("openapi", "")).startswith("3.0"))


def _resolve(document: Mapping[str, Any], node: Any) -> Any:
    while isinstance(node, Mapping) and "$ref" in node:
        target: Any = document
        for part in str(node["$ref"])[2:].split("/"):
            target = target[part]
        node = target
    return node


def _compile_schema(path: Path, schema: Any) -> Check:
    try:
        return _compiler(path).compile(schema)
    except UnsupportedSchema as error:
        logger.info("validating with jsonschema (%s in %s)", error, path.name)
        return _jsonschema_check(load_document(path), schema)


def _jsonschema_check(document: Mapping[str, Any], schema: Any) -> Check:
    """The slow but complete path, for schemas outside the compiled subset."""
    oas30 = str(document.get("openapi", "")).startswith("3.0")
    root = {**schema, "components": document.get("components", {})}
    if oas30:
        validator = OAS30Validator(root, format_checker=oas30_format_checker)
    else:
        validator = OAS31Validator(root, format_checker=oas31_format_checker)

    def check(value: Any) -> Failure | None:
        error = best_match(validator.iter_errors(value))
        if error is None:
            return None
        return [str(part) for part in reversed(error.absolute_path)], str(error.message)

    return check


@functools.cache
def compile_operation(path: Path, method: str, template: str) -> Operation | None:
    """The operation `method template` of the document at `path`, or None if it has none."""
    document = load_document(path)
    item = document.get("paths", {}).get(template)
    if item is None or method.lower() not in item:
        return None
    operation = item[method.lower()]
    declared = {}
    for node in [*item.get("parameters", []), *operation.get("parameters", [])]:
        parameter = _resolve(document, node)
        declared[(parameter["name"], parameter["in"])] = parameter  # operation level wins
    parameters = []
    for (name, location), parameter in declared.items():
        schema = _resolve(document, parameter.get("schema", {}))
        style = parameter.get("style", "form" if location in ("query", "cookie") else "simple")
        parameters.append(
            Parameter(
                name=name,
                location=location,
                required=bool(parameter.get("required", location == "path")),
                schema=schema,
                explode=bool(parameter.get("explode", style == "form")),
                check=_compile_schema(path, schema),
            )
        )
    body = _resolve(document, operation.get("requestBody", {}))
    media = {
        content_type.lower(): _compile_schema(path, content.get("schema", {}))
        for content_type, content in body.get("content", {}).items()
    }
    return Operation(parameters, bool(body.get("required", False)), media)


class VendorSpec:
    """The OpenAPI documents of one vendor; finds the operation of a route template."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    @classmethod
    def load(cls, vendor: str, names: list[str]) -> VendorSpec | None:
        folder = specs_dir()
        paths = [folder / name for name in names]
        missing = [path for path in paths if not path.is_file()]
        if missing:
            logger.warning(
                "%s fake: request validation against the official OpenAPI documents is "
                "skipped because %s is missing (set %s to the vendor-specs folder)",
                vendor,
                ", ".join(str(path) for path in missing),
                SPECS_DIR_VARIABLE,
            )
            return None
        return cls(paths)

    def operation(self, method: str, template: str) -> Operation | None:
        for path in self.paths:
            found = compile_operation(path, method, template)
            if found is not None:
                return found
        return None

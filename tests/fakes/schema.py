"""Compile the JSON Schema subset that the vendor OpenAPI documents use into plain closures.

jsonschema looks up its keyword table for every value it visits: about 30 µs per SendGrid
contact and 45 µs per Klaviyo profile here, so one 30,000-contact upsert would cost a second
of CPU in the fake. These closures make the same checks in a few microseconds. A keyword
outside the subset raises `UnsupportedSchema`, and the caller falls back to jsonschema for
that schema, so an unexpected document is validated slowly rather than wrongly.

OpenAPI 3.0 semantics (`nullable`, boolean `exclusiveMinimum`) or 3.1 (type lists,
numeric `exclusiveMinimum`) are picked per document. `nullable` only widens `type`, as in
openapi-schema-validator.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# A failed check: the JSON pointer parts (innermost first, parents append theirs on the way
# out so that nothing is allocated on success) and a message.
Failure = tuple[list[str], str]
Check = Callable[[Any], Failure | None]

ANNOTATIONS = frozenset(
    {
        "$comment",
        "contentEncoding",
        "contentMediaType",
        "default",
        "deprecated",
        "description",
        "example",
        "examples",
        "externalDocs",
        "readOnly",
        "title",
        "writeOnly",
        "xml",
    }
)


class UnsupportedSchema(Exception):
    """The schema uses a keyword this compiler does not implement."""


def pointer(failure: Failure) -> str:
    """The JSON pointer of a failure, e.g. `/contacts/3/email`."""
    parts = failure[0]
    return "".join("/" + part for part in reversed(parts))


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "string": lambda value: isinstance(value, str),
    "integer": _is_integer,
    "number": _is_number,
    "boolean": lambda value: isinstance(value, bool),
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "null": lambda value: value is None,
}


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return all(value[position] == "-" for position in (8, 13, 18, 23))


FORMAT_TESTS: dict[str, Callable[[str], bool]] = {"uuid": _is_uuid}


class SchemaCompiler:
    """Compiles schemas of one OpenAPI document; `$ref`s resolve inside that document."""

    def __init__(self, document: Mapping[str, Any], *, oas30: bool) -> None:
        self._document = document
        self._oas30 = oas30
        self._refs: dict[str, Check] = {}

    def compile(self, schema: Any) -> Check:
        if schema is True or schema == {}:
            return _accept
        if schema is False:
            return _reject
        if not isinstance(schema, Mapping):
            raise UnsupportedSchema(f"schema is not an object: {short(schema)}")
        checks: list[Check] = []
        keys = set(schema)
        if "$ref" in keys:
            checks.append(self._ref(schema["$ref"]))
            if self._oas30:
                keys = set()  # OpenAPI 3.0: siblings of $ref are ignored
            keys.discard("$ref")
        keys -= ANNOTATIONS
        keys = {key for key in keys if not key.startswith("x-")}
        for key in ("type", "nullable"):
            keys.discard(key)
        if "type" in schema and not ("$ref" in schema and self._oas30):
            checks.append(self._type(schema["type"], nullable=schema.get("nullable") is True))
        for key in sorted(keys):
            checks.append(self._keyword(key, schema[key], schema))
        return _all(checks)

    def _ref(self, ref: str) -> Check:
        if ref in self._refs:
            return self._refs[ref]
        if not ref.startswith("#/"):
            raise UnsupportedSchema(f"external $ref {ref}")
        target: Any = self._document
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        # Recursive schemas reach this ref again while it compiles: go through a cell.
        cell: list[Check] = []

        def deferred(value: Any) -> Failure | None:
            return cell[0](value)

        self._refs[ref] = deferred
        compiled = self.compile(target)
        cell.append(compiled)
        self._refs[ref] = compiled
        return compiled

    def _type(self, declared: Any, *, nullable: bool) -> Check:
        names = [declared] if isinstance(declared, str) else list(declared)
        if any(name not in TYPE_TESTS for name in names):
            raise UnsupportedSchema(f"type {declared!r}")
        if nullable and self._oas30:
            names.append("null")
        tests = tuple(TYPE_TESTS[name] for name in names)
        expected = ", ".join(repr(name) for name in names if name != "null" or not nullable)
        if nullable and self._oas30:
            expected += " or null"

        def check(value: Any) -> Failure | None:
            for test in tests:
                if test(value):
                    return None
            return [], f"{short(value)} is not of type {expected}"

        return check

    def _keyword(self, key: str, argument: Any, schema: Mapping[str, Any]) -> Check:
        if key == "properties":
            return self._properties(argument, schema.get("required", ()))
        if key == "required":
            if "properties" in schema:
                return _accept  # checked together with properties
            return _required(argument)
        if key == "additionalProperties":
            return self._additional(argument, schema.get("properties", {}))
        if key == "items":
            return self._items(self.compile(argument))
        if key in ("allOf", "anyOf", "oneOf"):
            return _combination(key, [self.compile(part) for part in argument])
        if key == "not":
            return _not(self.compile(argument))
        if key == "format":
            return _format(argument)
        if key in ("exclusiveMinimum", "exclusiveMaximum") and self._oas30:
            return _accept  # a modifier of minimum/maximum in OpenAPI 3.0
        simple = _SIMPLE.get(key)
        if simple is None:
            raise UnsupportedSchema(f"keyword {key!r}")
        if key in ("minimum", "maximum") and self._oas30:
            exclusive = schema.get("exclusiveMinimum" if key == "minimum" else "exclusiveMaximum")
            return simple(argument, exclusive is True)
        return simple(argument, False)

    def _properties(self, properties: Mapping[str, Any], required: Sequence[str]) -> Check:
        compiled = tuple((name, self.compile(sub)) for name, sub in properties.items())
        needed = tuple(required)

        def check(value: Any) -> Failure | None:
            if not isinstance(value, dict):
                return None
            for name in needed:
                if name not in value:
                    return [], f"{name!r} is a required property"
            for name, sub in compiled:
                if name in value:
                    failure = sub(value[name])
                    if failure is not None:
                        failure[0].append(name)
                        return failure
            return None

        return check

    def _additional(self, argument: Any, properties: Mapping[str, Any]) -> Check:
        known = frozenset(properties)
        if argument is True:
            return _accept
        sub = None if argument is False else self.compile(argument)

        def check(value: Any) -> Failure | None:
            if not isinstance(value, dict):
                return None
            for name in value:
                if name in known:
                    continue
                if sub is None:
                    return [], f"additional property {name!r} is not allowed"
                failure = sub(value[name])
                if failure is not None:
                    failure[0].append(name)
                    return failure
            return None

        return check

    @staticmethod
    def _items(sub: Check) -> Check:
        def check(value: Any) -> Failure | None:
            if not isinstance(value, list):
                return None
            for index, item in enumerate(value):
                failure = sub(item)
                if failure is not None:
                    failure[0].append(str(index))
                    return failure
            return None

        return check


def _accept(value: Any) -> Failure | None:
    return None


def _reject(value: Any) -> Failure | None:
    return [], "no value is allowed here"


def _all(checks: list[Check]) -> Check:
    checks = [check for check in checks if check is not _accept]
    if not checks:
        return _accept
    if len(checks) == 1:
        return checks[0]
    frozen = tuple(checks)

    def check(value: Any) -> Failure | None:
        for each in frozen:
            failure = each(value)
            if failure is not None:
                return failure
        return None

    return check


def _required(names: Sequence[str]) -> Check:
    needed = tuple(names)

    def check(value: Any) -> Failure | None:
        if isinstance(value, dict):
            for name in needed:
                if name not in value:
                    return [], f"{name!r} is a required property"
        return None

    return check


def _combination(kind: str, parts: list[Check]) -> Check:
    def check(value: Any) -> Failure | None:
        passed = sum(1 for part in parts if part(value) is None)
        if kind == "allOf" and passed < len(parts):
            return [], f"{short(value)} is not valid under all of the given schemas"
        if kind == "anyOf" and passed == 0:
            return [], f"{short(value)} is not valid under any of the given schemas"
        if kind == "oneOf" and passed != 1:
            which = "any" if passed == 0 else "more than one"
            return [], f"{short(value)} is not valid under {which} of the given schemas"
        return None

    return check


def _not(sub: Check) -> Check:
    def check(value: Any) -> Failure | None:
        if sub(value) is None:
            return [], f"{short(value)} should not be valid under the given schema"
        return None

    return check


def _format(name: str) -> Check:
    test = FORMAT_TESTS.get(name)
    if test is None:
        return _accept  # other formats are annotations, as jsonschema treats them by default

    def check(value: Any) -> Failure | None:
        if isinstance(value, str) and not test(value):
            return [], f"{short(value)} is not a valid {name!r}"
        return None

    return check


def _enum(options: Any, _: bool) -> Check:
    allowed = list(options)

    def check(value: Any) -> Failure | None:
        if value not in allowed:
            return [], f"{short(value)} is not one of {short(allowed)}"
        return None

    return check


def _const(expected: Any, _: bool) -> Check:
    def check(value: Any) -> Failure | None:
        if value != expected:
            return [], f"{short(expected)} was expected"
        return None

    return check


def _length(limit: int, *, longest: bool) -> Check:
    def check(value: Any) -> Failure | None:
        if isinstance(value, str):
            if longest and len(value) > limit:
                return [], f"{short(value)} is longer than {limit} characters"
            if not longest and len(value) < limit:
                return [], f"{short(value)} is shorter than {limit} characters"
        return None

    return check


def _count(limit: int, *, most: bool) -> Check:
    def check(value: Any) -> Failure | None:
        if isinstance(value, list):
            if most and len(value) > limit:
                return [], f"expected at most {limit} items, got {len(value)}"
            if not most and len(value) < limit:
                return [], f"expected at least {limit} items, got {len(value)}"
        return None

    return check


def _bound(limit: float, *, lower: bool, exclusive: bool) -> Check:
    def check(value: Any) -> Failure | None:
        if not _is_number(value):
            return None
        if lower and (value < limit or (exclusive and value == limit)):
            return [], f"{short(value)} is less than the minimum of {limit}"
        if not lower and (value > limit or (exclusive and value == limit)):
            return [], f"{short(value)} is greater than the maximum of {limit}"
        return None

    return check


def _pattern(expression: str, _: bool) -> Check:
    compiled = re.compile(expression)

    def check(value: Any) -> Failure | None:
        if isinstance(value, str) and compiled.search(value) is None:
            return [], f"{short(value)} does not match {expression!r}"
        return None

    return check


_SIMPLE: dict[str, Callable[[Any, bool], Check]] = {
    "enum": _enum,
    "const": _const,
    "pattern": _pattern,
    "maxLength": lambda limit, _: _length(limit, longest=True),
    "minLength": lambda limit, _: _length(limit, longest=False),
    "maxItems": lambda limit, _: _count(limit, most=True),
    "minItems": lambda limit, _: _count(limit, most=False),
    "minimum": lambda limit, exclusive: _bound(limit, lower=True, exclusive=exclusive),
    "maximum": lambda limit, exclusive: _bound(limit, lower=False, exclusive=exclusive),
    # OpenAPI 3.1 only; 3.0 handles these as modifiers above.
    "exclusiveMinimum": lambda limit, _: _bound(limit, lower=True, exclusive=True),
    "exclusiveMaximum": lambda limit, _: _bound(limit, lower=False, exclusive=True),
}

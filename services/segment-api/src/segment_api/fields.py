"""Field types shared by the request models: what PostgreSQL can store, checked up front so
bad input is a 422 naming the field, never a 500 from the database."""

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Request
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from segment_api.problems import ProblemException


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


async def refuse_nul_parameters(request: Request) -> None:
    """A dependency of every route: NUL in a query or path parameter is a 422 naming it
    (PostgreSQL cannot store NUL in text, and no parameter has a use for it)."""
    errors = [
        {"parameter": name.replace("\x00", "\\u0000"), "detail": "must not contain NUL characters"}
        for name, value in [*request.path_params.items(), *request.query_params.multi_items()]
        if isinstance(value, str) and ("\x00" in value or "\x00" in name)
    ]
    if errors:
        raise ProblemException(
            422, f"{errors[0]['parameter']}: {errors[0]['detail']}", errors=errors
        )


# Any \uD800 to \uDFFF escape, or the same encoded as UTF-8 (ED A0 80 to ED BF BF), which
# json.loads also decodes: a lone one survives decoding as a surrogate character.
_SURROGATE_IN_BODY = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _pointer_token(key: str) -> str:
    """A JSON pointer token (RFC 6901), a lone surrogate shown as its escape."""
    token = key.replace("~", "~0").replace("/", "~1")
    return token.encode("utf-8", "backslashreplace").decode()


def _lone_surrogates(value: object, pointer: str = "") -> Iterator[str]:
    if isinstance(value, str):
        if _SURROGATE.search(value):
            yield pointer
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{pointer}/{_pointer_token(key)}"
            if _SURROGATE.search(key):
                yield child
            yield from _lone_surrogates(item, child)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _lone_surrogates(item, f"{pointer}/{index}")


async def refuse_lone_surrogates(request: Request) -> None:
    """A dependency of every route: a JSON string holding half of a UTF-16 surrogate pair
    ("\\ud800") is valid JSON but no text: it cannot be stored or sent on as UTF-8. A 422
    naming each such string, before any field sees it. The raw body is searched first, so
    most requests are never decoded twice."""
    body = await request.body()
    # json.loads also reads UTF-16 and UTF-32 bodies, in which the search cannot look.
    if not _SURROGATE_IN_BODY.search(body) and json.detect_encoding(body) == "utf-8":
        return
    try:
        document = json.loads(body)
    except ValueError:
        return  # not JSON: the body's own validation says so
    detail = "must not contain a lone UTF-16 surrogate (half of a pair, such as \\ud800)"
    errors = [{"pointer": pointer, "detail": detail} for pointer in _lone_surrogates(document)]
    if errors:
        raise ProblemException(422, f"{errors[0]['pointer']}: {detail}", errors=errors)


TIMESTAMP_PROBLEM = "must be an RFC 3339 timestamp with a time zone, such as 2026-01-31T00:00:00Z"
_TIMESTAMP_START = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}")


def looks_like_timestamp(value: object) -> bool:
    """A date and a time of day: pydantic would also read a number, or a string of digits,
    as Unix time (in seconds or milliseconds, by its size)."""
    return isinstance(value, str) and _TIMESTAMP_START.match(value) is not None


def _timestamp_text(value: object) -> object:
    if not looks_like_timestamp(value):
        raise ValueError(TIMESTAMP_PROBLEM)
    return value


def in_utc_range(value: datetime) -> datetime:
    """pydantic bounds the year to 1..9999 in the value's own offset; in UTC, as it is
    stored, it must stay within those years too (9999-12-31T23:00:00-05:00 does not)."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must fall between 0001-01-01 and 9999-12-31 in UTC") from None
    return value


# The WHATWG "valid email address" (what browsers accept in <input type=email>), with a dot
# required in the domain: a store's customers have routable addresses. A regex is ~50 times
# cheaper than a full validator, which matters for 10,000-customer bulk calls.
EMAIL_PATTERN = (
    r"^(?!\.)(?!.*\.\.)(?!.*\.@)[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}"
    r"@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+$"
)
_EMAIL = re.compile(EMAIL_PATTERN)


MAX_EMAIL_LENGTH = 254  # RFC 5321's limit on a path, which SMTP servers enforce


def _email(value: str) -> str:
    if len(value) > MAX_EMAIL_LENGTH:
        raise ValueError(f"an email address has at most {MAX_EMAIL_LENGTH} characters")
    if not _EMAIL.fullmatch(value):
        raise ValueError("not a valid email address")
    return value.lower()


# Declared in the OpenAPI document too, so generated clients and fuzzers know the rule.
_NO_NUL = {"pattern": "^[^\\u0000]*$"}
Text = Annotated[str, AfterValidator(_no_nul), Field(json_schema_extra=_NO_NUL)]
Name = Annotated[
    str, Field(min_length=1, max_length=200, json_schema_extra=_NO_NUL), AfterValidator(_no_nul)
]
ExternalId = Annotated[
    str, Field(min_length=1, max_length=128, json_schema_extra=_NO_NUL), AfterValidator(_no_nul)
]
Email = Annotated[
    str,
    AfterValidator(_email),
    WithJsonSchema(
        {
            "type": "string",
            "format": "email",
            "maxLength": MAX_EMAIL_LENGTH,
            "pattern": EMAIL_PATTERN,
        }
    ),
]
# Years 1..9999 in UTC, inside PostgreSQL's range; naive times are refused.
Timestamp = Annotated[AwareDatetime, BeforeValidator(_timestamp_text), AfterValidator(in_utc_range)]
MONEY_PATTERN = r"^[0-9]{1,12}(\.[0-9]{1,2})?$"


def _money_string(value: object) -> object:
    """Money is a decimal string (docs/contract.md#http-conventions): a float would lose cents."""
    if not isinstance(value, str):
        raise ValueError('must be a decimal string such as "129.90"')
    if not re.fullmatch(MONEY_PATTERN, value):
        raise ValueError("must be a decimal string, 0 or more, at most two decimals")
    return value


# numeric(14, 2): at most 12 digits before the point.
Money = Annotated[
    Decimal,
    BeforeValidator(_money_string),
    WithJsonSchema({"type": "string", "pattern": MONEY_PATTERN, "examples": ["129.90"]}),
]
ATTRIBUTE_KEY_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}$"
AttributeKey = Annotated[str, Field(pattern=ATTRIBUTE_KEY_PATTERN)]
ATTRIBUTE_VALUE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "boolean"},
        {"type": "integer", "minimum": -(10**15), "maximum": 10**15},
        {"type": "number"},
        {"type": "string", "maxLength": 1000, **_NO_NUL},
    ]
}
# Errors saying only "this union member does not apply to a value of that type".
_OTHER_MEMBER = frozenset(
    {
        "bool_type",
        "bool_parsing",
        "int_type",
        "int_parsing",
        "int_from_float",
        "float_type",
        "float_parsing",
        "string_type",
    }
)


def _string_member(location: tuple[int | str, ...]) -> bool:
    """Whether an error comes from the string member (`function-after[..., constrained-str]`)."""
    return bool(location) and str(location[0]).endswith("-str]")


def _one_attribute_error(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    """One error for an invalid attribute value, at the value itself: pydantic reports one
    per union member, each under the member's name, which is no place in the body."""
    try:
        return handler(value)
    except ValidationError as exc:
        # A string is reported by the string member alone (a long run of digits would
        # otherwise also be "too large" and "not finite"); anything else by the others.
        text = isinstance(value, str)
        reasons = list(
            dict.fromkeys(
                error["msg"]
                for error in exc.errors()
                if error["type"] not in _OTHER_MEMBER and _string_member(error["loc"]) == text
            )
        )
        reason = "; ".join(reasons) or "must be a string, a number or a boolean"
        raise PydanticCustomError("attribute_value", "{reason}", {"reason": reason}) from None


AttributeValue = Annotated[
    StrictBool
    # Strict: a string that fails the string member (too long) is no number either.
    | Annotated[int, Strict(), Field(ge=-(10**15), le=10**15)]
    | Annotated[float, Strict(), Field(allow_inf_nan=False)]
    | Annotated[str, Field(max_length=1000), AfterValidator(_no_nul)],
    WrapValidator(_one_attribute_error),
]

Attributes = Annotated[
    dict[AttributeKey, AttributeValue],
    Field(max_length=200),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": 200,
            "propertyNames": {"pattern": ATTRIBUTE_KEY_PATTERN},
            "additionalProperties": ATTRIBUTE_VALUE_SCHEMA,
        }
    ),
]

_CURRENCY = re.compile(r"^[A-Z]{3}$")


class RequestModel(BaseModel):
    """Request bodies reject unknown fields, so a typo is a 422, not silently ignored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def money_str(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def currency_ok(value: str) -> bool:
    return bool(_CURRENCY.match(value))


def drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def with_examples(
    *examples: dict[str, Any],
    not_null: tuple[str, ...] = (),
    constraints: dict[str, Any] | None = None,
) -> ConfigDict:
    """A request model's config carrying examples for `/docs`; the `not_null` fields may be
    left out but not sent as null, and the published schema says so. `constraints`: JSON
    Schema keywords for what a model validator checks across fields."""

    def extra(schema: dict[str, Any]) -> None:
        schema["examples"] = list(examples)
        schema.update(constraints or {})
        for name in not_null:
            field = schema["properties"][name]
            choices = [choice for choice in field.pop("anyOf", []) if choice.get("type") != "null"]
            if len(choices) == 1:
                field.update(choices[0])
            elif choices:
                field["anyOf"] = choices

    return ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra=extra)


def refuse_null(value: object) -> object:
    """For fields that may be left out (keeping the stored value) but not cleared."""
    if value is None:
        raise ValueError("must not be null; leave the field out to keep the stored value")
    return value

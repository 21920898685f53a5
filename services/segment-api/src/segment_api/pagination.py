"""Opaque cursors for keyset pagination (SPEC section 3)."""

import base64
import binascii
import json
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from segment_api.problems import parameter_error

Limit = Annotated[int, Query(ge=1, le=1000, description="Items per page, 1 to 1000")]
Cursor = Annotated[
    str | None, Query(max_length=512, description="`next_cursor` of the previous page")
]


T = TypeVar("T")
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(*values: Any) -> str:
    raw = json.dumps(list(values), separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    """The values a cursor holds; a broken cursor is a 422 naming the parameter."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise parameter_error("cursor", "the cursor is not one this API issued") from exc
    if not isinstance(values, list) or len(values) != arity or not all(map(_fits, values)):
        raise parameter_error("cursor", "the cursor is not one this API issued")
    return values


def _fits(value: object) -> bool:
    """Integers in cursors are bigint keys: a forged one beyond that range cannot be bound."""
    return not isinstance(value, int) or BIGINT_MIN <= value <= BIGINT_MAX

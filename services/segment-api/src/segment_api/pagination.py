"""Opaque cursors for keyset pagination (docs/contract.md#http-conventions)."""

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

from segment_api.problems import parameter_error

Limit = Annotated[int, Query(ge=1, le=1000, description="Items per page, 1 to 1000")]
Cursor = Annotated[
    str | None, Query(max_length=512, description="`next_cursor` of the previous page")
]


T = TypeVar("T")
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        description="The `cursor` of the next page; null on the last page"
    )


def encode_cursor(*values: Any) -> str:
    raw = json.dumps(list(values), separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    """The values a cursor holds; a broken cursor is a 422 naming the parameter."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise _forged() from exc
    if not isinstance(values, list) or len(values) != arity:
        raise _forged()
    return values


def decode_key_cursor(cursor: str) -> int:
    """A cursor of one bigint key (a customer, a history entry, a sync run)."""
    (key,) = decode_cursor(cursor, 1)
    # bool is an int to Python, not to PostgreSQL; a key beyond bigint cannot be bound.
    if isinstance(key, bool) or not isinstance(key, int) or not BIGINT_MIN <= key <= BIGINT_MAX:
        raise _forged()
    return key


def decode_created_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """A cursor of (created_at, id), as segments and destinations are listed."""
    created_at, row_id = decode_cursor(cursor, 2)
    if not isinstance(created_at, str) or not isinstance(row_id, str):
        raise _forged()
    try:
        moment = datetime.fromisoformat(created_at)
        # Bound in UTC: a time beyond year 9999 there cannot be encoded.
        moment.astimezone(UTC)
        row = uuid.UUID(row_id)
    except (ValueError, OverflowError) as exc:
        raise _forged() from exc
    if moment.tzinfo is None:
        raise _forged()
    return moment, row


def _forged() -> Exception:
    return parameter_error("cursor", "the cursor is not one this API issued")

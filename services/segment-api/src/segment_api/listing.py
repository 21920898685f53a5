"""What every list operation takes, `limit` and `cursor`, as one request dependency, and the
cursor of the page after (docs/contract.md#http-conventions)."""

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends

from segment_api.pagination import (
    Cursor,
    Limit,
    decode_created_cursor,
    decode_key_cursor,
    encode_cursor,
)

R = TypeVar("R")


@dataclass(frozen=True)
class PageRequest:
    limit: Limit = 100
    cursor: Cursor = None

    def after_created(self) -> tuple[datetime, uuid.UUID] | None:
        """Where a page of a listing by (created_at, id) starts; None: at the beginning."""
        return decode_created_cursor(self.cursor) if self.cursor else None

    def after_key(self) -> int | None:
        """Where a page of a listing by one bigint key starts; None: at the beginning."""
        return decode_key_cursor(self.cursor) if self.cursor else None

    def next_cursor(self, rows: Sequence[R], key: Callable[[R], tuple[Any, ...]]) -> str | None:
        """The cursor of the next page, when `rows` (read one beyond `limit`, to know) hold
        more than this page: `key` of the last row of this one."""
        return encode_cursor(*key(rows[self.limit - 1])) if len(rows) > self.limit else None


# The query parameters come last in the document, after the operation's own.
PageQuery = Annotated[PageRequest, Depends()]

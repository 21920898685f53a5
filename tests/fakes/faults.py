"""Fault injection shared by the fakes: failing, slow and per-record rejected answers.

Faults are queued on a fake's state, from Python (`state.fail_next(...)`) or over HTTP
(`POST /_fake/faults`), and consumed by the next matching requests in arrival order.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from email.utils import formatdate
from typing import Any, Literal

DelayWhen = Literal["before", "after"]


@dataclass(slots=True)
class Fault:
    """The next `count` requests matching `method` and `path` fail or slow down.

    `status` answers that status in the vendor's error shape (429, 500, 503, 401, ...);
    `retry_after` is sent verbatim as `Retry-After` (seconds, or an HTTP date), while
    `retry_after_date` sends the HTTP date that many seconds after the answer. `delay` holds
    the answer for that many seconds: `after` (the default) once the request has been
    processed, so that a client timing out still changed the state, `before` while nothing
    has happened yet. `path` is a glob over the request path (`*` also matches `/`). `after`
    lets that many matching requests through untouched first (they may meet later faults).
    """

    status: int | None = None
    retry_after: str | None = None
    retry_after_date: float | None = None
    delay: float = 0.0
    delay_when: DelayWhen = "after"
    count: int = 1
    method: str | None = None
    path: str | None = None
    after: int = 0

    def __post_init__(self) -> None:
        if self.status is None and self.delay <= 0:
            raise ValueError("a fault needs a status or a positive delay")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError("a fault status must be between 400 and 599")
        if self.count < 1:
            raise ValueError("count must be at least 1")
        if self.after < 0:
            raise ValueError("after must not be negative")
        if self.delay_when not in ("before", "after"):
            raise ValueError("delay_when must be 'before' or 'after'")
        if self.method is not None:
            self.method = self.method.upper()

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        return self.path is None or fnmatch.fnmatchcase(path, self.path)

    def retry_after_header(self) -> str | None:
        if self.retry_after_date is not None:
            return formatdate(time.time() + self.retry_after_date, usegmt=True)
        return self.retry_after


_FIELDS = {
    "status",
    "retry_after",
    "retry_after_date",
    "delay",
    "delay_when",
    "count",
    "method",
    "path",
    "after",
}


def retry_after_text(value: float | str) -> str:
    """Seconds as `Retry-After` wants them: whole seconds, rounded up."""
    if isinstance(value, str):
        return value
    return str(max(0, math.ceil(value)))


def fault_from_json(data: Any) -> Fault:
    if not isinstance(data, dict):
        raise ValueError("a fault is a JSON object")
    unknown = set(data) - _FIELDS
    if unknown:
        raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
    retry_after = data.get("retry_after")
    if retry_after is not None and not isinstance(retry_after, int | float | str):
        raise ValueError("retry_after is seconds or an HTTP date")
    for name in ("status", "count", "after"):
        if name in data and not isinstance(data[name], int):
            raise ValueError(f"{name} must be an integer")
    for name in ("delay", "retry_after_date"):
        if data.get(name) is not None and not isinstance(data[name], int | float):
            raise ValueError(f"{name} must be a number of seconds")
    for name in ("method", "path", "delay_when"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise ValueError(f"{name} must be a string")
    return Fault(
        status=data.get("status"),
        retry_after=None if retry_after is None else retry_after_text(retry_after),
        retry_after_date=data.get("retry_after_date"),
        delay=float(data.get("delay", 0.0)),
        delay_when=data.get("delay_when", "after"),
        count=data.get("count", 1),
        method=data.get("method"),
        path=data.get("path"),
        after=data.get("after", 0),
    )


def record_key(record: str) -> str:
    """Emails match case-insensitively, member and external ids exactly."""
    return record.lower() if "@" in record else record


class Faults:
    """Queued faults and rejected records of one fake."""

    def __init__(self) -> None:
        self.pending: list[Fault] = []
        self.rejected: dict[str, str] = {}

    def add(self, fault: Fault) -> Fault:
        self.pending.append(fault)
        return fault

    def take(self, method: str, path: str) -> Fault | None:
        """The first pending fault matching this request, counted as used."""
        for index, fault in enumerate(self.pending):
            if fault.matches(method, path):
                if fault.after > 0:
                    fault.after -= 1
                    continue
                fault.count -= 1
                if fault.count == 0:
                    del self.pending[index]
                return fault
        return None

    def reject(self, records: Iterable[str], message: str) -> None:
        for record in records:
            self.rejected[record_key(record)] = message

    def rejection(self, record: str) -> str | None:
        """The error for a rejected email or id, else None."""
        if not self.rejected:
            return None
        return self.rejected.get(record_key(record))

    def clear(self) -> None:
        self.pending.clear()
        self.rejected.clear()

    def summary(self) -> dict[str, Any]:
        return {
            "pending": [asdict(fault) for fault in self.pending],
            "rejected": sorted(self.rejected),
        }

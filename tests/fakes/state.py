"""What every fake's state has: its credential, request counters and fault queue.

A fake answers every request in one event loop, and its handlers are plain functions that
never await, so each one reads and changes the state atomically; only the pipeline in
`app.py` awaits (reading the body, injected delays). That is what makes the state safe under
concurrent requests without locks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tests.fakes.faults import DelayWhen, Fault, Faults, retry_after_text


@dataclass
class RequestStats:
    """Counters for tests: requests per endpoint (`"POST /3.0/lists/{list_id}"`), answers
    per status, and the most requests the fake was ever handling at once."""

    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    total: int = 0
    in_flight: int = 0
    max_concurrency: int = 0

    def begin(self, endpoint: str) -> None:
        self.requests[endpoint] += 1
        self.total += 1
        self.in_flight += 1
        self.max_concurrency = max(self.max_concurrency, self.in_flight)

    def end(self, status: int) -> None:
        self.in_flight -= 1
        self.statuses[status] += 1

    def reset(self) -> None:
        self.requests.clear()
        self.statuses.clear()
        self.total = 0
        self.max_concurrency = self.in_flight

    def summary(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "requests": dict(self.requests),
            "statuses": {str(status): count for status, count in self.statuses.items()},
            "in_flight": self.in_flight,
            "max_concurrency": self.max_concurrency,
        }


@dataclass
class FakeState:
    """Base of every fake's state. `api_key` is the one credential the fake accepts."""

    api_key: str = "fake-api-key"
    faults: Faults = field(default_factory=Faults)
    stats: RequestStats = field(default_factory=RequestStats)

    # Attributes that `PATCH /_fake/config` may set (numbers only), per fake.
    tunables: ClassVar[tuple[str, ...]] = ()

    def fail_next(
        self,
        status: int,
        *,
        count: int = 1,
        retry_after: float | str | None = None,
        retry_after_date: float | None = None,
        method: str | None = None,
        path: str | None = None,
        after: int = 0,
    ) -> Fault:
        """The next `count` matching requests (after the first `after` of them) answer
        `status` in the vendor's error shape."""
        return self.faults.add(
            Fault(
                status=status,
                retry_after=None if retry_after is None else retry_after_text(retry_after),
                retry_after_date=retry_after_date,
                count=count,
                method=method,
                path=path,
                after=after,
            )
        )

    def delay_next(
        self,
        seconds: float,
        *,
        count: int = 1,
        when: DelayWhen = "after",
        method: str | None = None,
        path: str | None = None,
        after: int = 0,
    ) -> Fault:
        """The next `count` matching requests (after the first `after` of them) are answered
        `seconds` late."""
        return self.faults.add(
            Fault(
                delay=seconds,
                delay_when=when,
                count=count,
                method=method,
                path=path,
                after=after,
            )
        )

    def reject(self, *records: str, message: str = "rejected by the fake") -> None:
        """These emails or member ids fail as single records wherever they are sent."""
        self.faults.reject(records, message)

    def clear_faults(self) -> None:
        self.faults.clear()

    def set_tunables(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            if name not in self.tunables:
                raise ValueError(f"{name!r} cannot be set; settable: {', '.join(self.tunables)}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            current = getattr(self, name)
            setattr(self, name, type(current)(value))

    def tunable_values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.tunables}

    def summary(self, *, members: bool) -> dict[str, Any]:
        """The vendor's data in a JSON-friendly form, members only when asked."""
        return {}

    def rejection(self, record: str) -> str | None:
        return self.faults.rejection(record)

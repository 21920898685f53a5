"""Fixed rate-limit windows, as SendGrid and Klaviyo count requests."""

from __future__ import annotations

import math


class FixedWindow:
    """Counts requests in a window that opens with the first request after the last one closed.

    Opening at the first request, rather than at wall-clock multiples of the window, keeps a
    quick burst in one window, so tests that exhaust a limit do not straddle a boundary.
    Limit and length are passed on every call, so a test may change them at run time.
    """

    def __init__(self) -> None:
        self.opened = -math.inf
        self.used = 0

    def _roll(self, seconds: float, now: float) -> None:
        if now >= self.opened + seconds:
            self.opened = now
            self.used = 0

    def full(self, limit: int, seconds: float, now: float) -> bool:
        self._roll(seconds, now)
        return self.used >= limit

    def hit(self) -> None:
        self.used += 1

    def remaining(self, limit: int) -> int:
        return max(0, limit - self.used)

    def resets_in(self, seconds: float, now: float) -> float:
        return max(0.0, self.opened + seconds - now)

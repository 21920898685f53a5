"""A back-off policy that remembers what it gave, for tests of the loops that use it."""

from dataclasses import dataclass, field

from segments_shared.backoff import BackoffPolicy


@dataclass(frozen=True)
class RecordingPolicy(BackoffPolicy):
    """The policy, remembering each (attempt, delay) it gave."""

    given: list[tuple[int, float]] = field(default_factory=list)

    def delay(self, attempt: int) -> float:
        wait = super().delay(attempt)
        self.given.append((attempt, wait))
        return wait

"""The one interface every destination connector implements (STYLE rule 11).

A connector finds or creates the remote segment, and adds and removes members in batches of
its vendor's size. Limits live in a small capability record that the shared limiter and
retry policy enforce; connectors only speak their vendor's protocol.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class RateWindow:
    requests: int
    seconds: float


@dataclass(frozen=True)
class Capabilities:
    batch_size: int
    concurrency: int
    rate_windows: tuple[RateWindow, ...] = ()
    # ESPs know people by email; commerce and webhooks by the store's customer id.
    member_key: Literal["email", "external_id"] = "email"
    # ESPs receive only reachable members: an email and `subscribed`.
    reachable_only: bool = True


@dataclass(frozen=True)
class SyncMember:
    key: str
    external_id: str | None
    email: str | None
    first_name: str | None = None
    last_name: str | None = None
    remote_member_id: str | None = None


@dataclass(frozen=True)
class RemoteSegment:
    id: str
    name: str
    created: bool = False


@dataclass
class BatchResult:
    """Keys the destination rejected, with its reasons; ids it assigned to members."""

    failed: dict[str, str] = field(default_factory=dict)
    remote_member_ids: dict[str, str] = field(default_factory=dict)


@dataclass
class RunContext:
    sync_id: str
    segment_id: str
    segment_name: str
    # Connector state that must survive a restart (checkpointed with every batch).
    checkpoint: dict[str, Any] = field(default_factory=dict)


class ConnectorError(Exception):
    """A failure that ends the run."""


class AuthenticationFailed(ConnectorError):
    """401 or 403: retrying cannot help; the run fails at once with this message."""


class Connector(Protocol):
    capabilities: Capabilities

    async def find_or_create_segment(self, name: str, remembered_id: str | None) -> RemoteSegment:
        """The remote segment: the remembered id wins over the name (renaming it if the
        segment was renamed); otherwise found by name, or created."""
        ...

    def read_members(self, remote: RemoteSegment) -> AsyncIterator[list[str]]:
        """Keys the remote segment holds now, in pages (to reconcile with a segment that
        existed before our first sync)."""
        ...

    async def add_members(
        self, remote: RemoteSegment, members: list[SyncMember]
    ) -> BatchResult: ...

    async def remove_members(
        self, remote: RemoteSegment, members: list[SyncMember]
    ) -> BatchResult: ...

    async def aclose(self) -> None: ...

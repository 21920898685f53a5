"""The one interface every destination connector implements
(docs/vendors.md#common-to-every-vendor).

A connector finds or creates the remote segment, and adds and removes members in batches of
its vendor's size. Limits live in a small capability record that the shared limiter and
retry policy enforce; connectors only speak their vendor's protocol.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True)
class RateWindow:
    """At most `requests` requests in any `seconds` seconds, per vendor account."""

    requests: int
    seconds: float


@dataclass(frozen=True)
class Capabilities:
    # Members per add request (the vendor's array limit).
    batch_size: int
    # Requests in flight at once per vendor account, across runs and worker replicas.
    concurrency: int
    rate_windows: tuple[RateWindow, ...] = ()
    # Members per remove request, when the vendor's limit differs from `batch_size`.
    remove_batch_size: int | None = None
    # ESPs know people by email; commerce and webhooks by the store's customer id.
    member_key: Literal["email", "external_id"] = "email"
    # ESPs receive only reachable members: an email and `subscribed`.
    reachable_only: bool = True

    @property
    def removal_batch_size(self) -> int:
        return self.remove_batch_size or self.batch_size


@dataclass(frozen=True, slots=True)
class SyncMember:
    key: str
    external_id: str | None
    email: str | None
    first_name: str | None = None
    last_name: str | None = None
    remote_member_id: str | None = None
    # Our customer behind an addition (recorded with it), when known.
    customer_id: int | None = None


FoundBy = Literal["remembered", "name", "created"]


@dataclass(frozen=True)
class RemoteSegment:
    """`found_by` says what the worker's record is worth: `remembered` (the record describes
    it), `name` (it existed before: read it and reconcile), `created` (it holds nobody)."""

    id: str
    name: str
    found_by: FoundBy = "remembered"


@dataclass
class BatchResult:
    """Keys the destination rejected, with its reasons; ids it assigned to members."""

    failed: dict[str, str] = field(default_factory=dict)
    remote_member_ids: dict[str, str] = field(default_factory=dict)


@dataclass
class ConnectorState:
    """Connector state that must survive a restart (checkpointed with every round)."""

    # The number of the webhook's last batch sent.
    webhook_batch: int = 0


@dataclass
class RunContext:
    sync_id: str
    segment_id: str
    segment_name: str
    state: ConnectorState = field(default_factory=ConnectorState)


@dataclass(frozen=True)
class Answered:
    """What a batch that failed as a whole got done before the failure, when the connector
    knows it (commerce sends one request per member): the keys of the members the
    destination answered, and its result for them."""

    keys: frozenset[str]
    result: BatchResult


class ConnectorError(Exception):
    """A failure that ends the run. `answered`, when set, is recorded all the same."""

    answered: Answered | None = None


class AuthenticationFailed(ConnectorError):
    """401 or 403: retrying cannot help; the run fails at once with this message."""


class CreatedMeanwhile(Exception):
    """A create that timed out or answered 5xx was about to be sent again (or given up), and
    a look-up found what it was creating: the vendor did it after all. Sending it again would
    make a second one."""

    def __init__(self, remote_id: str) -> None:
        super().__init__(remote_id)
        self.remote_id = remote_id


class Connector(Protocol):
    capabilities: Capabilities
    # Commerce `naming: timestamped`: every run creates a new remote segment.
    creates_new_segments: bool
    # Commerce `export_mode: append` only adds.
    removes_members: bool

    def remote_name(self, segment_name: str) -> str:
        """The name the remote segment carries."""
        ...

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


def failed_all(members: list[SyncMember], reason: str) -> BatchResult:
    return BatchResult(failed={member.key: reason for member in members})

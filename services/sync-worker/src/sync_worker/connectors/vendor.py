"""What the vendor connectors (Mailchimp, SendGrid, Klaviyo, commerce) share: the way to the
vendor's API, the reading of its answers, and the one algorithm that finds or creates the
remote segment. A vendor supplies the path of a segment, a look-up by name and a create;
reading a segment's name and renaming it are the same call everywhere but for the path."""

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import httpx

from sync_worker.connectors.base import (
    Capabilities,
    ConnectorError,
    CreatedMeanwhile,
    FoundBy,
    RemoteSegment,
)
from sync_worker.connectors.http import VendorHttp, answer_text

# Looks for a segment by name: what a create that may have happened after all passes to
# `VendorHttp.request` as its `recheck`.
Recheck = Callable[[], Awaitable[str | None]]
C = TypeVar("C")


class CreateRefused(ConnectorError):
    """The vendor answered a create without creating: the segment is looked for by name once
    more (a create that timed out may have happened after all) before the run fails."""


class VendorConnector(ABC, Generic[C]):
    """A connector (`base.Connector`) to a vendor whose remote segments it finds or creates,
    built from its destination's configuration `C`."""

    capabilities: Capabilities
    # How errors name the vendor ("Klaviyo failed reading the list: HTTP 500 ...").
    vendor: str
    # What the vendor calls a remote segment ("list", "static segment").
    segment_noun: str
    # Commerce `naming: timestamped`: every run creates a new remote segment.
    creates_new_segments: bool = False
    # Commerce `export_mode: append` only adds.
    removes_members: bool = True
    # The longest name the vendor takes (None: any length).
    max_name: int | None = None

    def __init__(self, config: C, http: VendorHttp) -> None:
        self.config = config
        self.http = http

    def remote_name(self, segment_name: str) -> str:
        return segment_name[: self.max_name]

    async def find_or_create_segment(self, name: str, remembered_id: str | None) -> RemoteSegment:
        """The remembered id wins over the name (the segment renamed if it was renamed);
        otherwise found by name, or created."""
        if remembered_id is not None:
            current = await self.get_segment(remembered_id)
            if current is not None:
                if current != name:
                    await self.rename_segment(remembered_id, name)
                return RemoteSegment(remembered_id, name, "remembered")
        found = await self.find_segment(name)
        if found is not None:
            return RemoteSegment(found, name, "name")
        try:
            created = await self.create_segment(name, lambda: self.find_segment(name))
        except CreatedMeanwhile as meanwhile:
            # A timestamped name (a new segment every run) is this run's own; any other is
            # reconciled and checked not to be another segment's, as any found by name.
            found_by: FoundBy = "created" if self.creates_new_segments else "name"
            return RemoteSegment(meanwhile.remote_id, name, found_by)
        except CreateRefused:
            found = await self.find_segment(name)
            if found is None:
                raise
            return RemoteSegment(found, name, "name")
        return RemoteSegment(created, name, "created")

    async def aclose(self) -> None:
        await self.http.aclose()

    async def get_segment(self, segment_id: str) -> str | None:
        """The name of the segment with this id; None when the vendor no longer has it
        (deleted there: it is found by name or created again)."""
        noun = self.segment_noun
        response = await self.http.request(
            "GET", self.segment_path(segment_id), describe=f"read the remembered {noun}"
        )
        if response.status_code == 404:
            return None
        self.require(response, f"reading the remembered {noun}")
        return self.name_in(response.json())

    async def rename_segment(self, segment_id: str, name: str) -> None:
        response = await self.http.request(
            "PATCH",
            self.segment_path(segment_id),
            json_body=self.rename_body(segment_id, name),
            describe=f"rename the {self.segment_noun}",
        )
        self.require(response, f"renaming {self.segment_noun} {segment_id} to {name!r}")

    def name_in(self, segment: Any) -> str:
        """The name in the vendor's document of a segment."""
        return str(segment.get("name") or "")

    def rename_body(self, segment_id: str, name: str) -> Any:
        return {"name": name}

    def error_text(self, response: httpx.Response) -> str:
        """The vendor's answer in one line, for errors: the entries of its `errors` list, or
        a short excerpt of the body."""
        try:
            errors = response.json().get("errors") or []
            details = "; ".join(self.error_entry(e) for e in errors if isinstance(e, dict))
        except (ValueError, AttributeError, TypeError):
            details = ""
        return answer_text(response, details)

    @staticmethod
    def error_entry(error: dict[str, Any]) -> str:
        """One entry of the vendor's `errors` list, in words."""
        return str(error)

    def require(self, response: httpx.Response, doing: str, ok: tuple[int, ...] = (200,)) -> None:
        """Any answer but `ok` fails the run."""
        if response.status_code not in ok:
            raise ConnectorError(f"{self.vendor} failed {doing}: {self.error_text(response)}")

    def require_segment(self, response: httpx.Response, remote: RemoteSegment) -> None:
        """A 404 on the remote segment's members: deleted at the vendor during the run, which
        fails."""
        if response.status_code == 404:
            raise ConnectorError(
                f"{self.vendor} {self.segment_noun} {remote.id} no longer exists; the next "
                "sync finds or creates it again"
            )

    async def post_create(
        self,
        path: str,
        name: str,
        recheck: Recheck,
        *,
        body: Any,
        params: dict[str, str | int] | None = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> str:
        """Create the segment `name` (`body` says it as the vendor wants); the id it got.
        CreateRefused when the vendor answered without creating it."""
        response = await self.http.request(
            "POST",
            path,
            params=params,
            json_body=body,
            describe=f"create the {self.segment_noun}",
            recheck=recheck,
        )
        if response.status_code not in ok:
            raise CreateRefused(
                f"{self.vendor} did not create the {self.segment_noun} {name!r}: "
                f"{self.error_text(response)}"
            )
        return str(response.json()["id"])

    @abstractmethod
    def segment_path(self, segment_id: str) -> str:
        """The path of the remote segment with this id."""

    @abstractmethod
    async def find_segment(self, name: str) -> str | None:
        """The id of the segment of this name, if there is one."""

    @abstractmethod
    async def create_segment(self, name: str, recheck: Recheck) -> str:
        """The id of a new segment of this name. The create is sent with `recheck` (it ends
        in CreatedMeanwhile when the vendor created it after all); CreateRefused when the
        vendor answered without creating it."""

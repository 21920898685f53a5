"""A run's working state, saved with every batch to `sync_runs.checkpoint` (JSONB): where a
resumed run picks up. Saved as a flat object, its connector's state beside the run's, as
earlier workers saved it; a checkpoint they wrote reads the same (runs in flight survive an
upgrade)."""

from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

from pydantic import BaseModel, Field

from sync_worker.connectors.base import ConnectorState

CONNECTOR_KEYS = tuple(field.name for field in fields(ConnectorState))


class Checkpoint(BaseModel):
    # The remote segment's name, decided once (a timestamped one must not change on resume);
    # None until the run first resolves the remote segment.
    remote_name: str | None = None
    remote_id: str | None = None
    # Found by name: the record is read afresh from the remote segment before planning.
    reconcile: bool = False
    reconciled: bool = False
    planned: bool = False
    # The plan is the segment itself (a first sync), read in customer order.
    streamed: bool = False
    # How far the plan has been sent and recorded.
    position: int = 0
    connector: ConnectorState = Field(default_factory=ConnectorState)

    @classmethod
    def load(cls, saved: Mapping[str, Any]) -> "Checkpoint":
        connector = {key: saved[key] for key in CONNECTOR_KEYS if key in saved}
        return cls.model_validate({**saved, "connector": connector})

    def dump(self) -> dict[str, Any]:
        saved = self.model_dump(mode="json", exclude={"connector"}, exclude_none=True)
        return {**saved, **asdict(self.connector)}

    def start_over(self, remote_id: str, *, reconcile: bool) -> None:
        """Another remote segment than the one checkpointed (or the first): what was planned,
        reconciled and sent for another is done with."""
        self.remote_id = remote_id
        self.reconcile = reconcile
        self.reconciled = self.planned = self.streamed = False
        self.position = 0

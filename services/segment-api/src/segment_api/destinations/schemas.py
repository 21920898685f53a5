import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from segment_api.fields import Name, RequestModel, with_examples
from segments_shared.destinations import DestinationType

CONFIG_DESCRIPTION = (
    "By type: mailchimp `api_key`, `list_id`; sendgrid `api_key`; klaviyo `api_key`, "
    "`revision`; webhook `url`, `secret`; commerce `environment`, `store_id`, `token`, "
    "`export_mode`, `naming`, `report_name`. Every type takes `base_url`. See "
    "docs/sync.md."
)


class DestinationCreate(RequestModel):
    name: Name
    type: DestinationType
    config: dict[str, Any] = Field(description=CONFIG_DESCRIPTION)

    model_config = with_examples(
        {
            "name": "CRM webhook",
            "type": "webhook",
            "config": {
                "url": "https://crm.example.com/hooks/segments",
                "secret": "a-long-shared-secret",
            },
        },
        {
            "name": "Newsletter audience",
            "type": "mailchimp",
            "config": {"api_key": "0123456789abcdef-us14", "list_id": "a1b2c3d4e5"},
        },
    )


class DestinationUpdate(RequestModel):
    """Fields left out keep their values. `config` is merged into the current one (a `null`
    value drops a setting back to its default), then validated as a whole; a credential sent
    back masked, as the API shows it, keeps its value. The type cannot change."""

    name: Name | None = None
    config: dict[str, Any] | None = Field(None, description=CONFIG_DESCRIPTION)

    @field_validator("name", "config")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Validators run only on values sent: an explicit null is refused, a missing field kept.
        if value is None:
            raise ValueError("cannot be null")
        return value

    @model_validator(mode="after")
    def _something(self) -> "DestinationUpdate":
        if not self.model_fields_set:
            raise ValueError("give name or config")
        return self

    model_config = with_examples(
        {"config": {"api_key": "fedcba9876543210-us14"}},
        {"name": "Newsletter audience (EU)"},
        not_null=("name", "config"),
        constraints={"minProperties": 1},
    )


class Destination(BaseModel):
    id: uuid.UUID
    name: str
    type: DestinationType
    config: dict[str, Any] = Field(description="Credentials are masked, never returned")
    version: int
    created_at: datetime
    updated_at: datetime

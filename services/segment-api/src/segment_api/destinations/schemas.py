import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from segment_api.fields import Name, RequestModel, with_examples
from segments_shared.destinations import DestinationType


class DestinationCreate(RequestModel):
    name: Name
    type: DestinationType
    config: dict[str, Any] = Field(
        description="By type: mailchimp `api_key`, `list_id`; sendgrid `api_key`; klaviyo "
        "`api_key`, `revision`; webhook `url`, `secret`; commerce `environment`, `store_id`, "
        "`token`, `export_mode`, `naming`, `report_name`. Every type takes `base_url`."
    )

    model_config = with_examples(
        {
            "name": "CRM webhook",
            "type": "webhook",
            "config": {
                "url": "https://crm.example.com/hooks/segments",
                "secret": "a-long-shared-secret",
            },
        }
    )


class Destination(BaseModel):
    id: uuid.UUID
    name: str
    type: DestinationType
    config: dict[str, Any] = Field(description="Credentials are masked, never returned")
    version: int
    created_at: datetime
    updated_at: datetime

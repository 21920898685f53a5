"""Destination types and their configuration (docs/sync.md#types-and-configuration), shared
by segment-api (which validates and stores them) and sync-worker (which connects with them)."""

import hashlib
import re
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

DestinationType = Literal["mailchimp", "sendgrid", "klaviyo", "webhook", "commerce"]

SECRET_FIELDS: dict[str, tuple[str, ...]] = {
    "mailchimp": ("api_key",),
    "sendgrid": ("api_key",),
    "klaviyo": ("api_key",),
    "webhook": ("secret",),
    "commerce": ("token",),
}

Secret = Annotated[str, Field(min_length=1, max_length=500)]


class DestinationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: AnyHttpUrl | None = Field(
        None, description="API root including its version path; defaults to the vendor's own"
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    def resolved_base_url(self) -> str:
        return str(self.base_url).rstrip("/") if self.base_url else self.default_base_url()

    def default_base_url(self) -> str:
        raise NotImplementedError


class MailchimpConfig(DestinationConfig):
    api_key: Secret
    list_id: Annotated[str, Field(min_length=1, max_length=100)]

    @field_validator("api_key")
    @classmethod
    def _has_data_centre(cls, value: str) -> str:
        if not re.fullmatch(r".+-[a-z]+[0-9]+", value):
            raise ValueError("a Mailchimp API key ends with its data centre, such as '-us14'")
        return value

    def default_base_url(self) -> str:
        return f"https://{self.api_key.rsplit('-', 1)[1]}.api.mailchimp.com/3.0"


class SendgridConfig(DestinationConfig):
    api_key: Secret

    def default_base_url(self) -> str:
        return "https://api.sendgrid.com/v3"


class KlaviyoConfig(DestinationConfig):
    api_key: Secret
    revision: Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")] = "2026-07-15"

    def default_base_url(self) -> str:
        return "https://a.klaviyo.com/api"


class WebhookConfig(DestinationConfig):
    url: AnyHttpUrl
    secret: Annotated[str, Field(min_length=16, max_length=500)]

    def default_base_url(self) -> str:
        return str(self.url)


class CommerceConfig(DestinationConfig):
    base_url: AnyHttpUrl = Field(
        description="The store's admin REST root, e.g. https://shop.example.com/rest/admin/v2"
    )
    environment: Literal["production", "staging"]
    store_id: Annotated[str, Field(min_length=1, max_length=64)]
    token: Secret
    export_mode: Literal["append", "replace"] = "replace"
    naming: Literal["match_name", "timestamped"] = "match_name"
    report_name: Annotated[str, Field(min_length=1, max_length=100)] = "Segments"

    def default_base_url(self) -> str:
        return str(self.base_url)


CONFIG_MODELS: dict[str, type[DestinationConfig]] = {
    "mailchimp": MailchimpConfig,
    "sendgrid": SendgridConfig,
    "klaviyo": KlaviyoConfig,
    "webhook": WebhookConfig,
    "commerce": CommerceConfig,
}


def split_secrets(
    destination_type: str, config: DestinationConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(public config, secrets) of a validated configuration."""
    values = config.model_dump(mode="json", exclude_none=True)
    secret_names = SECRET_FIELDS[destination_type]
    secrets = {name: values.pop(name) for name in secret_names if name in values}
    return values, secrets


def account_key(destination_type: str, config: DestinationConfig, secrets: dict[str, Any]) -> str:
    """Identifies the vendor account: limits are per account, across destinations."""
    credential = next(iter(secrets.values()), "")
    raw = f"{destination_type}:{config.resolved_base_url()}:{credential}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]

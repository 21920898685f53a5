from pydantic import SecretStr, field_validator

from segment_api.rules.settings import RefreshSettings
from segments_shared.config import DestinationSettings, ServiceSettings


class ApiSettings(ServiceSettings, DestinationSettings, RefreshSettings):
    api_port: int = 8000
    bootstrap_api_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    cors_origins: str = ""
    # Revoked keys stop working within this many seconds (keys are cached per process).
    api_key_cache_seconds: float = 10.0
    max_body_bytes: int = 10 * 1024 * 1024

    @field_validator("bootstrap_api_key", "secret_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `SEGMENTS_BOOTSTRAP_API_KEY=` in a .env file means "no key", not "an empty key".
        return None if value == "" else value

    @field_validator("store_currency")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

"""Small settings classes composed by each service (docs/contract.md#configuration).

Every variable is read from the environment with the `SEGMENTS_` prefix; nothing is read at
import time: services build their settings in `main()` or in the app factory.
"""

from typing import Literal

from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from segments_shared.netguard import AllowList

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@localhost:5432/segments"
DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/"


class SegmentsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEGMENTS_", extra="ignore")


class DatabaseSettings(SegmentsSettings):
    database_url: str = DEFAULT_DATABASE_URL
    # Overflow connections are closed when returned: size the pool for the usual load, so
    # connections are not opened and closed under it.
    database_pool_size: int = 40
    database_pool_overflow: int = 10
    database_pool_timeout: float = 10.0
    database_command_timeout: float = 60.0
    # "transaction" behind PgBouncer's transaction pooling: no prepared statement outlives its
    # transaction, and what keeps session state (LISTEN, session advisory locks, migrations)
    # goes to `database_direct_url` (docs/operations.md#behind-pgbouncer).
    database_pooling: Literal["session", "transaction"] = "session"
    database_direct_url: str | None = None
    # Opening a connection to a host that went silent waits this long, not asyncpg's 60 s.
    database_connect_timeout: float = 5.0


class BrokerSettings(SegmentsSettings):
    # One node, or several of one cluster comma-separated (segments_shared/bus/addresses.py).
    amqp_url: SecretStr = SecretStr(DEFAULT_AMQP_URL)
    bus_prefix: str = "segments"


class ServiceSettings(DatabaseSettings, BrokerSettings):
    """What every service needs: the database, the broker and the log level."""

    log_level: str = "INFO"
    store_currency: str = "USD"
    # Every port a service opens listens here: all interfaces in a container, loopback on a
    # developer's machine (`make run`).
    bind_host: str = "0.0.0.0"


class DestinationSettings(SegmentsSettings):
    """What segment-api (saving) and sync-worker (connecting) check destination URLs with."""

    # Hosts or CIDR ranges in private space destinations may use (segments_shared/netguard.py).
    allow_private_destinations: str = ""

    @field_validator("allow_private_destinations")
    @classmethod
    def _parses(cls, value: str) -> str:
        AllowList.parse(value)  # a mistyped entry stops the service at start-up
        return value

    @property
    def destination_allow_list(self) -> AllowList:
        return AllowList.parse(self.allow_private_destinations)

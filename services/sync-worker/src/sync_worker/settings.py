from pydantic import SecretStr

from segments_shared.config import DestinationSettings, ServiceSettings


class SyncWorkerSettings(ServiceSettings, DestinationSettings):
    sync_worker_port: int = 8001
    secret_key: SecretStr | None = None
    # Runs one worker process carries at once.
    sync_concurrency: int = 4
    # A run whose worker stops renewing its lease for this long is resumed by another.
    sync_lease_seconds: float = 30.0
    # Retry policy towards vendors: full-jitter exponential backoff.
    sync_retry_attempts: int = 8
    sync_retry_base_seconds: float = 0.5
    sync_retry_cap_seconds: float = 30.0
    sync_request_timeout_seconds: float = 60.0
    # Subscriptions: a steady stream of changes still runs this long after the first change
    # not yet sent; how often change signals are folded; how soon a subscription whose pair
    # has a run in progress tries again.
    subscription_change_ceiling_seconds: float = 60.0
    subscription_poll_seconds: float = 0.5
    subscription_busy_retry_seconds: float = 1.0

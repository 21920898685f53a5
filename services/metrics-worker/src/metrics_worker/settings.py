from segments_shared.config import ServiceSettings


class MetricsWorkerSettings(ServiceSettings):
    metrics_worker_port: int = 8002
    # Changes to one segment within this window fold into one recomputation.
    metrics_debounce_seconds: float = 0.1
    metrics_concurrency: int = 2

from segments_shared.config import ServiceSettings


class MetricsWorkerSettings(ServiceSettings):
    metrics_worker_port: int = 8002
    # A segment's KPIs are recomputed once its changes have paused this long...
    metrics_debounce_seconds: float = 0.1
    # ...or, during a steady stream of changes, this long after the first one not folded in.
    metrics_max_delay_seconds: float = 2.0
    metrics_concurrency: int = 2
    # RFM scores are recomputed this long after the first order change since the last run...
    rfm_debounce_seconds: float = 5.0
    # ...and at least this often, since recency grows as days pass.
    rfm_period_seconds: float = 86400.0

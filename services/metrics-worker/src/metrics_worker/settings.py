from segments_shared.config import ServiceSettings


class MetricsWorkerSettings(ServiceSettings):
    metrics_worker_port: int = 8002
    # Changes are folded into the KPIs this long after the first one not yet folded (a burst
    # folds into one fold; a steady stream is folded this often).
    metrics_debounce_seconds: float = 0.1
    # Every segment is checked against a recomputation from the orders this often.
    metrics_check_period_seconds: float = 86400.0
    # After a bulk load, everyone's RFM scores and the boundaries are computed again once
    # order changes pause this long...
    rfm_debounce_seconds: float = 5.0
    # ...and at the latest this long after the first of them.
    rfm_max_delay_seconds: float = 60.0
    # ...and at least this often, since recency grows as days pass.
    rfm_period_seconds: float = 86400.0

"""Tuning of rule-segment refreshes, read from the environment (README, configuration)."""

from segments_shared.config import SegmentsSettings


class RefreshSettings(SegmentsSettings):
    # A rule segment is recomputed at most once per this many seconds after customer, order
    # or referenced-segment changes: the first change not yet folded in sets the time.
    rule_refresh_debounce_seconds: float = 60.0
    # Rules with relative dates (within_last_days, before_last_days, days_since_last_order)
    # are recomputed whole at least this often, since their truth changes as time passes.
    rule_refresh_period_seconds: float = 3600.0
    # How often each replica looks for due refreshes and folds new changes in.
    rule_refresh_poll_seconds: float = 1.0
    # A refresh whose replica stops (crash, kill) is taken over after this long.
    rule_refresh_lease_seconds: float = 120.0
    # Refreshes one segment-api process runs at once.
    rule_refresh_concurrency: int = 2

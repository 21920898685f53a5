"""When a subscription's sync runs (SPEC §6.1): `on_change` after a quiet period; `interval`
and `cron` at slots, each computed from the previous slot (not from a run's end), so that
slots missed while every sync-worker was down run once, never once per missed slot.

segment-api checks schedules and shows the next slot; the sync-worker computes the slot after
each one it runs."""

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import croniter

CRON_FIELDS = 5


def cron_error(expression: str) -> str | None:
    """Why `expression` is not a five-field cron expression (UTC), or None."""
    if len(expression.split()) != CRON_FIELDS:
        return "must have five fields: minute, hour, day of month, month, day of week"
    if not croniter.is_valid(expression):
        return "is not a valid cron expression"
    return None


def next_slot(schedule: dict[str, Any], previous: datetime, now: datetime) -> datetime | None:
    """The first slot after `now`, counted from the slot `previous` (the last one run, or the
    subscription's creation for the first). None: the schedule has no slots (`on_change`)."""
    mode = schedule["mode"]
    if mode == "interval":
        every = timedelta(minutes=int(schedule["every_minutes"]))
        if previous > now:
            return previous
        # Missed slots are skipped: the next is the first after now on previous's grid.
        steps = math.floor((now - previous) / every) + 1
        return previous + steps * every
    if mode == "cron":
        start = max(previous, now).astimezone(UTC)
        slot: datetime = croniter(schedule["cron"], start).get_next(datetime)
        return slot
    return None


def first_slot(schedule: dict[str, Any], created: datetime) -> datetime | None:
    """A new subscription's first slot: one interval after its creation, or the cron
    expression's next time."""
    if schedule["mode"] == "interval":
        return created + timedelta(minutes=int(schedule["every_minutes"]))
    return next_slot(schedule, created, created)

"""Subscription slots: computed from the previous slot, missed slots run once."""

from datetime import UTC, datetime, timedelta

from segments_shared.schedules import cron_error, first_slot, next_slot

T0 = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)  # a Monday


def test_interval_slots_follow_the_previous_slot_not_the_run() -> None:
    schedule = {"mode": "interval", "every_minutes": 15}
    # The run ended 4 minutes late: the next slot is still on the grid.
    assert next_slot(schedule, T0, T0 + timedelta(minutes=4)) == T0 + timedelta(minutes=15)


def test_interval_slots_missed_while_down_run_once() -> None:
    schedule = {"mode": "interval", "every_minutes": 15}
    # Back after 100 minutes: one run now (the job was due), then the next slot on the grid.
    back = T0 + timedelta(minutes=100)
    assert next_slot(schedule, T0, back) == T0 + timedelta(minutes=105)


def test_interval_first_slot_is_one_interval_after_creation() -> None:
    assert first_slot({"mode": "interval", "every_minutes": 1}, T0) == T0 + timedelta(minutes=1)


def test_cron_slots_in_utc_and_missed_ones_skipped() -> None:
    schedule = {"mode": "cron", "cron": "0 6 * * 1-5"}
    assert next_slot(schedule, T0, T0) == T0 + timedelta(days=1)
    # Down from Monday 06:00 to Saturday noon: the next slot is the following Monday.
    saturday = T0 + timedelta(days=5, hours=6)
    assert next_slot(schedule, T0, saturday) == T0 + timedelta(days=7)
    assert first_slot(schedule, T0 - timedelta(minutes=1)) == T0


def test_on_change_has_no_slots() -> None:
    assert next_slot({"mode": "on_change", "debounce_seconds": 5}, T0, T0) is None


def test_cron_must_have_five_valid_fields() -> None:
    assert cron_error("0 6 * * 1-5") is None
    assert cron_error("* * * * * *") is not None
    assert cron_error("61 * * * *") is not None
    assert cron_error("every day") is not None

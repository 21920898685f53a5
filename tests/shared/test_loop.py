"""The loop every background worker shares (segments_shared/loop.py), its back-off, and the
LISTEN connection that wakes the loops (segments_shared/db/notify.py)."""

import asyncio
import logging
import time

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.backoff import BackoffPolicy
from segments_shared.db.notify import Listener
from segments_shared.loop import Trouble, WorkerLoop
from tests.support.backoff import RecordingPolicy
from tests.support.waiting import eventually

pytestmark = pytest.mark.asyncio


class Scripted(WorkerLoop):
    """A loop whose steps follow a script: each entry an exception to raise or the delay to
    return; past its end, steps return None. Each step takes `duration` seconds."""

    def __init__(
        self,
        script: list[Exception | float | None],
        *,
        duration: float = 0.0,
        poll_seconds: float = 0.01,
        backoff: BackoffPolicy | None = None,
        stable_seconds: float = 10.0,
        min_interval: float = 0.0,
    ) -> None:
        super().__init__(
            "scripted",
            poll_seconds=poll_seconds,
            backoff=backoff,
            stable_seconds=stable_seconds,
            min_interval=min_interval,
        )
        self.script = list(script)
        self.duration = duration
        self.steps: list[float] = []
        self.ended = False

    async def step(self) -> float | None:
        self.steps.append(time.monotonic())
        if self.duration:
            await asyncio.sleep(self.duration)
        outcome = self.script.pop(0) if self.script else None
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def stopped(self) -> None:
        self.ended = True


async def run_until(loop: Scripted, steps: int) -> None:
    task = asyncio.create_task(loop.run())

    async def taken() -> int:
        return len(loop.steps)

    try:
        assert await eventually(taken, lambda n: n >= steps, within=5) >= steps
    finally:
        loop.stop()
        await asyncio.wait_for(task, 2)


async def test_failed_steps_back_off_more_each_time_until_one_succeeds() -> None:
    policy = RecordingPolicy(base=0.01, cap=0.04)
    failures: list[Exception | float | None] = [RuntimeError("down")] * 5
    loop = Scripted([*failures, None, RuntimeError("down again")], backoff=policy)
    await run_until(loop, 8)

    assert [attempt for attempt, _ in policy.given] == [0, 1, 2, 3, 4, 0]
    for attempt, wait in policy.given:
        assert 0 <= wait <= min(policy.cap, policy.base * 2**attempt)
    for (_, wait), before, after in zip(
        policy.given[:5], loop.steps[:5], loop.steps[1:6], strict=True
    ):
        assert after - before >= wait - 0.001
    assert loop.ended


async def test_a_step_that_failed_after_a_stable_while_starts_the_back_off_again() -> None:
    policy = RecordingPolicy(base=0.01, cap=0.04)
    loop = Scripted(
        [RuntimeError("dropped")] * 3, duration=0.03, stable_seconds=0.02, backoff=policy
    )
    await run_until(loop, 3)
    assert [attempt for attempt, _ in policy.given] == [0, 0, 0]


async def test_min_interval_folds_a_burst_of_wake_ups_into_few_steps() -> None:
    loop = Scripted([], poll_seconds=30.0, min_interval=0.1)
    task = asyncio.create_task(loop.run())
    try:
        burst_ends = time.monotonic() + 0.5
        while time.monotonic() < burst_ends:
            loop.wake()
            await asyncio.sleep(0.005)
    finally:
        loop.stop()
        await asyncio.wait_for(task, 2)

    # About one step per 100 ms of the burst (not one per wake-up, not one per 30 s poll).
    assert 3 <= len(loop.steps) <= 8
    gaps = [after - before for before, after in zip(loop.steps, loop.steps[1:], strict=False)]
    assert min(gaps) >= 0.1 - 0.001


async def test_wake_up_during_a_step_is_kept() -> None:
    loop = Scripted([], poll_seconds=30.0, duration=0.05)
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.sleep(0.02)  # within the first step
        loop.wake()

        async def taken() -> int:
            return len(loop.steps)

        assert await eventually(taken, lambda n: n >= 2, within=2) >= 2
    finally:
        loop.stop()
        await asyncio.wait_for(task, 2)


@pytest.mark.parametrize(
    "loop",
    [
        pytest.param(Scripted([], poll_seconds=30.0), id="waiting-to-poll"),
        pytest.param(Scripted([], min_interval=30.0), id="within-min-interval"),
        pytest.param(
            Scripted([RuntimeError("down")] * 100, backoff=BackoffPolicy(base=30.0, cap=30.0)),
            id="backing-off",
        ),
    ],
)
async def test_stop_returns_promptly(loop: Scripted) -> None:
    task = asyncio.create_task(loop.run())

    async def taken() -> int:
        return len(loop.steps)

    await eventually(taken, bool, within=2)
    await asyncio.sleep(0.05)  # into the wait
    stopping = time.monotonic()
    loop.stop()
    await asyncio.wait_for(task, 2)
    assert time.monotonic() - stopping < 0.5
    assert loop.ended


async def test_trouble_is_logged_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    loop = Scripted(
        [Trouble("channel closed"), RuntimeError("a bug")],
        backoff=BackoffPolicy(base=0.01, cap=0.01),
    )
    with caplog.at_level(logging.WARNING, logger="segments_shared.loop"):
        await run_until(loop, 3)
    failures = [r for r in caplog.records if r.name == "segments_shared.loop"]
    assert [bool(r.exc_info) for r in failures] == [False, True]


# The LISTEN connection -------------------------------------------------------------------


async def notify(engine: AsyncEngine, channel: str, payload: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload}
        )


async def test_notifications_reach_the_callbacks_of_their_channel(
    engine: AsyncEngine, database_url: str
) -> None:
    heard: dict[str, list[str]] = {"test_loop_a": [], "test_loop_b": []}

    def broken(payload: str) -> None:
        raise RuntimeError("a callback's bug")

    listener = Listener(database_url)
    listener.on("test_loop_a", broken)
    for channel, payloads in heard.items():
        listener.on(channel, payloads.append)
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.connected.wait(), 5)
        # Called at once: whatever was sent before the connection is for them to look at.
        assert heard == {"test_loop_a": [""], "test_loop_b": [""]}
        await notify(engine, "test_loop_a", "one")
        await notify(engine, "test_loop_b", "two")

        async def heard_on_b() -> list[str]:
            return list(heard["test_loop_b"])

        # Delivered in commit order: once b has its own, a has had its own.
        assert await eventually(heard_on_b, lambda h: len(h) > 1, within=5) == ["", "two"]
        assert heard["test_loop_a"] == ["", "one"]
    finally:
        listener.stop()
        await asyncio.wait_for(task, 5)


async def test_the_listener_reconnects_and_calls_every_callback_again(
    engine: AsyncEngine, database_url: str
) -> None:
    heard: list[str] = []

    async def heard_so_far() -> list[str]:
        return list(heard)

    listener = Listener(database_url)
    listener.on("test_loop_reconnect", heard.append)
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.connected.wait(), 5)
        heard.clear()
        async with engine.begin() as conn:
            terminated = await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database()"
                    " AND query = 'LISTEN \"test_loop_reconnect\"'"
                )
            )
            assert terminated.scalars().all() == [True]

        assert await eventually(heard_so_far, bool, within=5) == [""]
        await notify(engine, "test_loop_reconnect", "after")
        assert await eventually(heard_so_far, lambda h: len(h) > 1, within=5) == ["", "after"]
    finally:
        listener.stop()
        await asyncio.wait_for(task, 5)

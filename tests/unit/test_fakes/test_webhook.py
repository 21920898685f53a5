"""The fake webhook receiver: signatures, staleness, recording and applying batches."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import httpx
import pytest

from tests.fakes.webhook import WebhookState, sign
from tests.unit.test_fakes.running import Running

Fake = Running[WebhookState]


def batch(number: int, added: Sequence[str], removed: Sequence[str] = ()) -> dict[str, Any]:
    def member(external_id: str) -> dict[str, str]:
        return {
            "external_id": external_id,
            "email": f"{external_id}@example.com",
            "first_name": "A",
            "last_name": "B",
        }

    return {
        "sync_id": "sync-1",
        "segment_id": "seg-1",
        "segment_name": "VIP",
        "batch": number,
        "added": [member(each) for each in added],
        "removed": [member(each) for each in removed],
    }


async def deliver(
    fake: Fake, body: dict[str, Any], *, secret: str = "whsec-test", at: int | None = None
) -> httpx.Response:
    raw = json.dumps(body).encode()
    headers = {"X-Segments-Signature": sign(secret, raw, at), "Content-Type": "application/json"}
    return await fake.client.post("/hooks/segments", content=raw, headers=headers)


@pytest.mark.asyncio
async def test_signed_batches_are_recorded_in_order_and_applied(webhook_fake: Fake) -> None:
    first = await deliver(webhook_fake, batch(1, ["c1", "c2", "c3"]))
    second = await deliver(webhook_fake, batch(2, ["c4"], removed=["c2"]))

    assert (first.status_code, second.status_code) == (200, 200)
    assert [each["batch"] for each in webhook_fake.state.batches] == [1, 2]
    assert webhook_fake.state.external_ids("seg-1") == {"c1", "c3", "c4"}
    assert webhook_fake.state.segments["seg-1"].members["c4"]["email"] == "c4@example.com"


@pytest.mark.asyncio
async def test_bad_or_missing_signatures_get_401(webhook_fake: Fake) -> None:
    raw = json.dumps(batch(1, ["c1"])).encode()
    tampered = sign("whsec-test", raw).replace("v1=", "v1=0")

    wrong_secret = await deliver(webhook_fake, batch(1, ["c1"]), secret="other")
    unsigned = await webhook_fake.client.post("/hooks/segments", content=raw)
    altered = await webhook_fake.client.post(
        "/hooks/segments", content=raw, headers={"X-Segments-Signature": tampered}
    )

    assert [each.status_code for each in (wrong_secret, unsigned, altered)] == [401, 401, 401]
    assert webhook_fake.state.batches == []
    assert webhook_fake.state.bad_signatures == 3


@pytest.mark.asyncio
async def test_old_timestamps_are_refused(webhook_fake: Fake) -> None:
    stale = await deliver(webhook_fake, batch(1, ["c1"]), at=int(time.time()) - 301)
    recent = await deliver(webhook_fake, batch(1, ["c1"]), at=int(time.time()) - 200)

    assert stale.status_code == 400
    assert recent.status_code == 200
    assert webhook_fake.state.stale_signatures == 1
    assert len(webhook_fake.state.batches) == 1


@pytest.mark.asyncio
async def test_any_of_several_signatures_may_match(webhook_fake: Fake) -> None:
    raw = json.dumps(batch(1, ["c1"])).encode()
    good = sign("whsec-test", raw)
    moment, _, digest = good.partition(",v1=")
    header = f"{moment},v1={'0' * 64},v1={digest}"

    answer = await webhook_fake.client.post(
        "/", content=raw, headers={"X-Segments-Signature": header}
    )

    assert answer.status_code == 200


@pytest.mark.asyncio
async def test_malformed_large_and_rejected_batches(webhook_fake: Fake) -> None:
    webhook_fake.state.reject("c2", message="unknown customer")

    too_big = await deliver(webhook_fake, batch(1, [f"c{index}" for index in range(1001)]))
    malformed = await deliver(webhook_fake, {"sync_id": "s"})
    rejected = await deliver(webhook_fake, batch(2, ["c1", "c2"]))

    assert too_big.status_code == 400
    assert malformed.status_code == 400
    assert rejected.status_code == 422
    assert rejected.json()["external_ids"] == ["c2"]
    assert webhook_fake.state.batches == []

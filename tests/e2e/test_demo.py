"""`make demo`'s loader (deploy/demo.py) against the three services as processes and the
sandbox vendors: a small store loaded through the API, destinations, rule segments with members
and KPIs, and a first sync of each that reached the fakes."""

import asyncio
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from deploy.demo import DEMO_SEGMENTS
from tests.fakes import commerce, mailchimp
from tests.fakes.server import serve
from tests.fixtures.infra import ADMIN_KEY
from tests.fixtures.processes import Suite

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


async def scalar(engine: AsyncEngine, sql: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(sql))).scalar_one())


@pytest.mark.asyncio
async def test_the_demo_loads_a_store_segments_it_and_syncs_it(
    suite: Suite, engine: AsyncEngine
) -> None:
    audience = mailchimp.MailchimpState()
    audience.add_list("list1")
    store, staging = commerce.CommerceState(), commerce.CommerceState()
    async with (
        serve(mailchimp.create_app(audience)) as mailchimp_url,
        serve(commerce.create_app(store)) as commerce_url,
        serve(commerce.create_app(staging)) as staging_url,
    ):
        # The way `make demo` runs it, smaller; its own process, as from a checkout.
        loader = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "deploy.demo",
            "--load-only",
            *("--api", suite["segment-api"].url, "--key", ADMIN_KEY),
            *("--mailchimp", mailchimp_url, "--commerce", commerce_url),
            *("--commerce-staging", staging_url),
            *("--customers", "500", "--orders", "2500", "--seed", "3"),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(loader.communicate(), 180)
        except TimeoutError:
            loader.kill()
            await loader.wait()
            pytest.fail("the loader did not end within 180 s")
    report = output.decode()
    assert loader.returncode == 0, report
    assert "The demo store is ready" in report

    assert await scalar(engine, "SELECT count(*) FROM customers") == 500
    assert await scalar(engine, "SELECT count(*) FROM orders") == 2500
    assert await scalar(engine, "SELECT count(DISTINCT email_status) FROM customers") == 4
    assert await scalar(engine, "SELECT count(*) FROM destinations") == 3
    async with engine.connect() as conn:
        segments = {
            row.name: row
            for row in await conn.execute(
                text("SELECT id, name, kind, status, member_count FROM segments")
            )
        }
        runs = (await conn.execute(text("SELECT segment_id, status, trigger FROM sync_runs"))).all()
    for demo in DEMO_SEGMENTS:
        assert segments[demo.name].kind == "user"
        assert segments[demo.name].status == "ready"
        assert segments[demo.name].member_count > 0, demo.name
    # The default segments were refreshed after the load, not a minute later.
    assert segments["All customers"].member_count == 500
    assert segments["Repeat buyers"].member_count > 0

    # Every demo segment subscribed; a first sync of each and a promotion to staging, then the
    # run its subscription started by itself after a member was added by hand.
    assert await scalar(engine, "SELECT count(*) FROM subscriptions") == len(DEMO_SEGMENTS)
    assert Counter(run.trigger for run in runs) == {
        "manual": len(DEMO_SEGMENTS),
        "promotion": 1,
        "change": 1,
    }
    assert {run.status for run in runs} == {"succeeded"}
    assert "its subscription sent it" in report
    mailchimp_segments = {
        segment.name: segment.members for segment in audience.lists["list1"].segments.values()
    }
    for demo in DEMO_SEGMENTS:
        if demo.destination == "mailchimp":
            assert mailchimp_segments[demo.name], demo.name
    async with engine.connect() as conn:
        added_by_hand = (
            await conn.execute(
                text(
                    "SELECT c.email FROM customers c JOIN segment_overrides o "
                    "ON o.customer_id = c.id AND o.segment_id = :segment"
                ),
                {"segment": segments[DEMO_SEGMENTS[0].name].id},
            )
        ).scalar_one()
    assert added_by_hand in mailchimp_segments[DEMO_SEGMENTS[0].name]
    platinum = next(demo for demo in DEMO_SEGMENTS if demo.destination == "commerce")
    production_group = store.group_named(platinum.name)
    staging_group = staging.group_named(platinum.name)
    assert production_group is not None
    assert staging_group is not None
    assert len(production_group.included()) == segments[platinum.name].member_count
    assert staging_group.included() == production_group.included()

    # The KPIs of every demo segment follow its members.
    async with engine.connect() as conn:
        kpis = {
            row.segment_id: row
            for row in await conn.execute(
                text("SELECT segment_id, customers, total_orders FROM segment_kpis")
            )
        }
    for demo in DEMO_SEGMENTS:
        figures = kpis[segments[demo.name].id]
        assert figures.customers == segments[demo.name].member_count, demo.name
        assert figures.total_orders > 0, demo.name

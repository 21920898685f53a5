"""Target-group operations (docs/rules.md#target-group-operations): results against plain
set arithmetic, determinism, sources left alone, and bad input refused with nothing written."""

import asyncio
import random
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segment_api.rules import repository as rules_repository
from segment_api.rules.compile import RuleCompiler, SortKey, random_seed
from segment_api.rules.nodes import Membership
from segment_api.targets import repository
from segment_api.targets.service import part_sizes
from tests.api.helpers import assert_problem, events, make_segment
from tests.rules.conftest import Snapshot
from tests.rules.helpers import make_customers, make_rule_segment, member_ids, place_orders, settled

CUSTOMERS = [f"c{i:02d}" for i in range(60)]


async def with_members(api: httpx.AsyncClient, name: str, external_ids: list[str]) -> str:
    segment_id = await make_segment(api, name)
    if external_ids:
        response = await api.post(
            f"/v1/segments/{segment_id}/members", json={"external_ids": external_ids}
        )
        assert response.status_code == 200, response.text
    return segment_id


async def store(api: httpx.AsyncClient) -> tuple[str, str, str]:
    """Three manual segments over 60 customers: multiples of 2, of 3, and the first 20."""
    await make_customers(api, *({"external_id": c} for c in CUSTOMERS))
    twos = await with_members(api, "Twos", CUSTOMERS[::2])
    threes = await with_members(api, "Threes", CUSTOMERS[::3])
    first = await with_members(api, "First twenty", CUSTOMERS[:20])
    return twos, threes, first


async def snapshot(api: httpx.AsyncClient, *segment_ids: str) -> list[tuple[int, int, set[str]]]:
    found = []
    for segment_id in segment_ids:
        segment = (await api.get(f"/v1/segments/{segment_id}")).json()
        found.append(
            (segment["version"], segment["member_count"], await member_ids(api, segment_id))
        )
    return found


@pytest.mark.asyncio
async def test_combine_is_set_arithmetic_and_leaves_the_sources(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    twos, threes, first = await store(api)
    before = await snapshot(api, twos, threes, first)
    sets = {twos: set(CUSTOMERS[::2]), threes: set(CUSTOMERS[::3]), first: set(CUSTOMERS[:20])}
    expected = {
        "union": sets[twos] | sets[threes] | sets[first],
        "intersect": sets[twos] & sets[threes] & sets[first],
        "difference": sets[twos] - sets[threes] - sets[first],
    }
    for operation, want in expected.items():
        response = await api.post(
            "/v1/segments/combine",
            json={"operation": operation, "segment_ids": [twos, threes, first], "name": operation},
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert response.headers["location"].endswith(created["id"])
        assert (created["kind"], created["definition"], created["member_count"]) == (
            "user",
            {"type": "manual"},
            len(want),
        )
        assert await member_ids(api, created["id"]) == want
        history = (await api.get(f"/v1/segments/{created['id']}/history")).json()["items"]
        assert [(h["entered"], h["cause"]) for h in history] == [(len(want), "combined")]
    assert (
        await api.post(
            "/v1/segments/combine",
            json={
                "operation": "union",
                "segment_ids": [twos, threes],
                "name": "Named",
                "description": "mine",
            },
        )
    ).json()["description"] == "mine"
    assert await snapshot(api, twos, threes, first) == before
    created = [e["data"]["name"] for e in await events(clean_db, "segment.created")]
    assert {"union", "intersect", "difference"} <= set(created)


@pytest.mark.asyncio
async def test_combine_of_the_most_segments_a_request_may_name(api: httpx.AsyncClient) -> None:
    """Fifty segments: one join per segment, past the planner's join-collapse limit."""
    await make_customers(api, *({"external_id": c} for c in CUSTOMERS))
    # Segment i holds every customer but the i-th: all fifty share the last ten.
    segments = [
        await with_members(api, f"All but {i}", CUSTOMERS[:i] + CUSTOMERS[i + 1 :])
        for i in range(50)
    ]
    for operation, want in (("intersect", set(CUSTOMERS[50:])), ("union", set(CUSTOMERS))):
        response = await api.post(
            "/v1/segments/combine",
            json={"operation": operation, "segment_ids": segments, "name": operation},
        )
        assert response.status_code == 201, response.text
        assert response.json()["member_count"] == len(want)
        assert await member_ids(api, response.json()["id"]) == want
    # Everyone less 49 single customers.
    singles = [await with_members(api, f"Only {i}", [CUSTOMERS[i]]) for i in range(1, 50)]
    response = await api.post(
        "/v1/segments/combine",
        json={
            "operation": "difference",
            "segment_ids": [response.json()["id"], *singles],
            "name": "difference",
        },
    )
    assert response.status_code == 201, response.text
    want = set(CUSTOMERS[:1] + CUSTOMERS[50:])
    assert response.json()["member_count"] == len(want)
    assert await member_ids(api, response.json()["id"]) == want


@pytest.mark.asyncio
async def test_split_deals_every_member_once_by_weight_and_seed(api: httpx.AsyncClient) -> None:
    twos, _, _ = await store(api)  # 30 members
    parts = [
        {"name": "A", "weight": 1},
        {"name": "B", "weight": 2},
        {"name": "C", "weight": 0.5},
        {"name": "D", "weight": 0},
    ]
    response = await api.post(f"/v1/segments/{twos}/split", json={"parts": parts, "seed": "s1"})
    assert response.status_code == 201, response.text
    items = response.json()["items"]
    assert [item["name"] for item in items] == ["A", "B", "C", "D"]
    assert [item["member_count"] for item in items] == [9, 17, 4, 0]  # 8.57, 17.14, 4.29, 0
    dealt = [await member_ids(api, item["id"]) for item in items]
    assert set().union(*dealt) == set(CUSTOMERS[::2])
    assert sum(len(part) for part in dealt) == 30
    # Same seed, same split; another seed, another split.
    again = await api.post(
        f"/v1/segments/{twos}/split",
        json={
            "parts": [{"name": f"{p['name']}2", "weight": p["weight"]} for p in parts],
            "seed": "s1",
        },
    )
    assert [await member_ids(api, item["id"]) for item in again.json()["items"]] == dealt
    other = await api.post(
        f"/v1/segments/{twos}/split",
        json={
            "parts": [
                {"name": "X", "weight": 1},
                {"name": "Y", "weight": 2},
                {"name": "Z", "weight": 0.5},
                {"name": "W", "weight": 0},
            ],
            "seed": "s2",
        },
    )
    assert [await member_ids(api, item["id"]) for item in other.json()["items"]] != dealt
    assert (await api.get(f"/v1/segments/{twos}")).json()["member_count"] == 30


@settings(max_examples=200, deadline=None, database=None)
@given(
    members=st.integers(0, 500),
    weights=st.lists(st.floats(0, 1000, allow_nan=False), min_size=2, max_size=10).filter(
        lambda ws: sum(ws) > 0
    ),
)
def test_part_sizes_follow_the_weights_within_one_member(
    members: int, weights: list[float]
) -> None:
    sizes = part_sizes(members, weights)
    assert sum(sizes) == members
    total = sum(weights)
    for size, weight in zip(sizes, weights, strict=True):
        assert abs(size - members * weight / total) < 1 + 1e-9


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("weights", "counted"),
    [
        ([1, 2, 0.5, 0], 30),
        ([0, 1, 0, 3], 30),
        ([0, 0, 1], 30),
        # Counted before members were erased: the last ranges start past the last member.
        ([1, 1, 1, 1], 44),
        ([3, 1], 38),
    ],
)
async def test_split_counts_what_each_part_got(
    api: httpx.AsyncClient, clean_db: AsyncEngine, weights: list[float], counted: int
) -> None:
    """The counts the split statement reports are the rows each part holds, also when the
    segment had fewer members than counted (erased meanwhile)."""
    twos = uuid.UUID((await store(api))[0])  # 30 members
    lower_bounds = [sum(part_sizes(counted, weights)[:i]) for i in range(len(weights))]
    async with clean_db.connect() as conn:
        async with conn.begin():
            parts = [uuid.uuid4() for _ in weights]
            counts = await repository.split(conn, twos, random_seed("split:s"), lower_bounds, parts)
            held = [
                set(
                    (
                        await conn.execute(
                            text("SELECT customer_id FROM segment_members WHERE segment_id = :s"),
                            {"s": part},
                        )
                    ).scalars()
                )
                for part in parts
            ]
            await conn.rollback()
    assert [counts[part] for part in parts] == [len(h) for h in held]
    assert sum(len(h) for h in held) == 30
    assert len(set().union(*held)) == 30
    if counted == 30:
        assert [len(h) for h in held] == part_sizes(30, weights)


@pytest.mark.asyncio
async def test_split_compares_the_customer_where_a_hash_equals_a_bound(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    """Parts start at (hash, customer) bounds. A member whose hash equals a bound's but
    whose customer is below it (two customers' hashes colliding) belongs to the part before:
    bounds made up from real hashes stand in for a collision no test could find."""
    twos = uuid.UUID((await store(api))[0])  # 30 members
    seed = random_seed("split:collide")
    async with clean_db.connect() as conn:
        async with conn.begin():
            ranked = (
                await conn.execute(
                    text(
                        "SELECT hashtextextended(customer_id::text, :seed) AS h, customer_id "
                        "FROM segment_members WHERE segment_id = :s ORDER BY 1, 2"
                    ),
                    {"seed": seed, "s": twos},
                )
            ).all()
            (h0, c0), (h15, c15), (h20, c20) = ranked[0], ranked[15], ranked[20]
            # Member 15 is just below the second bound, member 20 just above the third.
            bounds = [(h0, c0), (h15, c15 + 1), (h20, c20 - 1)]
            parts = [uuid.uuid4() for _ in bounds]
            written = await repository.deal(conn, twos, seed, bounds, parts)
            rows = await conn.execute(
                text(
                    "SELECT segment_id, customer_id FROM segment_members "
                    "WHERE segment_id = ANY(:parts)"
                ),
                {"parts": parts},
            )
            held: dict[uuid.UUID, set[int]] = {part: set() for part in parts}
            for part, customer in rows:
                held[part].add(customer)
            await conn.rollback()
    customers = [customer for _, customer in ranked]
    assert written == 30
    assert [held[part] for part in parts] == [
        set(customers[:16]),
        set(customers[16:20]),
        set(customers[20:]),
    ]


@pytest.mark.asyncio
async def test_reduce_keeps_the_first_members_by_order_or_a_seeded_sample(
    api: httpx.AsyncClient,
) -> None:
    twos, _, _ = await store(api)
    await place_orders(
        api,
        *((f"o{i}", c, f"{i}.00", "2026-10-01T00:00:00Z") for i, c in enumerate(CUSTOMERS[:12])),
    )
    top = await api.post(
        f"/v1/segments/{twos}/reduce",
        json={"max_size": 3, "order_by": "total_revenue_desc", "name": "Top 3"},
    )
    assert top.status_code == 201, top.text
    assert await member_ids(api, top.json()["id"]) == {"c10", "c08", "c06"}
    samples = []
    for name, seed in (("S1", "x"), ("S2", "x"), ("S3", "y")):
        response = await api.post(
            f"/v1/segments/{twos}/reduce", json={"max_size": 10, "seed": seed, "name": name}
        )
        samples.append(await member_ids(api, response.json()["id"]))
    assert samples[0] == samples[1] != samples[2]
    assert all(len(sample) == 10 and sample <= set(CUSTOMERS[::2]) for sample in samples)
    everyone = await api.post(
        f"/v1/segments/{twos}/reduce", json={"max_size": 1000, "name": "All of them"}
    )
    assert everyone.json()["member_count"] == 30


@pytest.mark.asyncio
async def test_a_random_reduce_keeps_what_a_size_limit_would(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    """A random reduce reads the membership alone; a rule's size limit sorts the customers
    the rule compiler selects. The same seed keeps the same members either way."""
    twos = uuid.UUID((await store(api))[0])  # 30 members
    seed = random_seed("reduce:same")
    compiler = RuleCompiler(
        Membership(twos, True, ""), strategy="lateral", sort=SortKey("random", seed)
    )

    async def members(conn: AsyncConnection, segment_id: uuid.UUID) -> set[int]:
        statement = text("SELECT customer_id FROM segment_members WHERE segment_id = :s")
        return set((await conn.execute(statement, {"s": segment_id})).scalars())

    async with clean_db.connect() as conn, conn.begin():
        for limit in (1, 7, 29, 30, 100):
            ruled, sampled = uuid.uuid4(), uuid.uuid4()
            selected = await repository.insert_selected(conn, ruled, compiler.selection(), limit)
            taken = await repository.insert_sample(conn, sampled, twos, seed, limit)
            assert selected == taken == min(limit, 30)
            assert await members(conn, ruled) == await members(conn, sampled), limit
        await conn.rollback()


@pytest.mark.asyncio
async def test_compare_gives_sizes_intersections_and_jaccard(api: httpx.AsyncClient) -> None:
    twos, threes, first = await store(api)
    empty = await make_segment(api, "Empty")
    other_empty = await make_segment(api, "Also empty")
    response = await api.post(
        "/v1/segments/compare", json={"segment_ids": [twos, threes, first, empty, other_empty]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(s["name"], s["size"]) for s in body["segments"]] == [
        ("Twos", 30),
        ("Threes", 20),
        ("First twenty", 20),
        ("Empty", 0),
        ("Also empty", 0),
    ]
    pairs = {tuple(p["segment_ids"]): p for p in body["pairs"]}
    assert len(pairs) == 10
    assert pairs[(twos, threes)] | {"jaccard": None} == {
        "segment_ids": [twos, threes],
        "intersection": 10,
        "union": 40,
        "jaccard": None,
    }
    assert pairs[(twos, threes)]["jaccard"] == pytest.approx(0.25)
    assert (pairs[(twos, first)]["intersection"], pairs[(twos, first)]["union"]) == (10, 40)
    assert pairs[(twos, empty)]["jaccard"] == 0
    assert pairs[(empty, other_empty)]["jaccard"] is None


@pytest.mark.asyncio
async def test_deduplicate_removes_what_an_earlier_segment_holds(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    twos, threes, first = await store(api)
    response = await api.post(
        "/v1/segments/deduplicate", json={"segment_ids": [first, twos, threes]}
    )
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [(i["segment_id"], i["removed"], i["member_count"]) for i in items] == [
        (first, 0, 20),
        (twos, 10, 20),  # the even ones among the first twenty
        (threes, 13, 7),  # 7 among the first twenty, 6 more even ones
    ]
    found = [await member_ids(api, s) for s in (first, twos, threes)]
    assert sum(len(members) for members in found) == len(set().union(*found))  # no overlaps
    assert set().union(*found) == set(CUSTOMERS[:20]) | set(CUSTOMERS[::2]) | set(CUSTOMERS[::3])
    history = (await api.get(f"/v1/segments/{threes}/history")).json()["items"]
    assert (history[0]["exited"], history[0]["cause"]) == (13, "deduplicated")
    changed = [e["data"] for e in await events(clean_db, "segment.members_changed")]
    assert {(c["segment_id"], c["removed"]) for c in changed if c["cause"] == "deduplicated"} == {
        (twos, 10),
        (threes, 13),
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_deduplicate_is_set_arithmetic_over_random_segments(
    api: httpx.AsyncClient, seed: int
) -> None:
    rng = random.Random(seed)
    await make_customers(api, *({"external_id": c} for c in CUSTOMERS))
    sets = [set(rng.sample(CUSTOMERS, rng.randint(0, 45))) for _ in range(6)]
    ids = [await with_members(api, f"Random {i}", sorted(s)) for i, s in enumerate(sets)]
    response = await api.post("/v1/segments/deduplicate", json={"segment_ids": ids})
    assert response.status_code == 200, response.text
    seen: set[str] = set()
    expected = []
    for members in sets:
        expected.append((len(members & seen), members - seen))
        seen |= members
    removed = [item["removed"] for item in response.json()["items"]]
    assert removed == [count for count, _ in expected]
    assert [await member_ids(api, i) for i in ids] == [kept for _, kept in expected]


@pytest.mark.asyncio
async def test_deduplicate_reads_a_rule_or_inactive_first_segment_and_leaves_it(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    twos, threes, first = await store(api)
    await place_orders(
        api, *((f"o{i}", c, "5.00", "2026-10-01T00:00:00Z") for i, c in enumerate(CUSTOMERS[:20]))
    )
    buyers = await make_rule_segment(
        api, "Buyers", {"field": "orders_count", "op": "gte", "value": 1}
    )
    await settled(clean_db)
    assert await member_ids(api, buyers) == set(CUSTOMERS[:20])
    before = await snapshot(api, buyers)
    response = await api.post(
        "/v1/segments/deduplicate", json={"segment_ids": [buyers, twos, threes]}
    )
    assert response.status_code == 200, response.text
    assert [(i["segment_id"], i["removed"]) for i in response.json()["items"]] == [
        (buyers, 0),
        (twos, 10),
        (threes, 13),
    ]
    assert await snapshot(api, buyers) == before

    # An inactive segment first is only read; an inactive manual one later loses members.
    evens = await with_members(api, "Evens", CUSTOMERS[::2])
    for segment_id in (first, evens):
        assert (await api.post(f"/v1/segments/{segment_id}/deactivate")).status_code == 200
    before = await snapshot(api, first)
    response = await api.post("/v1/segments/deduplicate", json={"segment_ids": [first, evens]})
    assert response.status_code == 200, response.text
    assert [(i["segment_id"], i["removed"]) for i in response.json()["items"]] == [
        (first, 0),
        (evens, 10),
    ]
    assert await snapshot(api, first) == before
    assert await member_ids(api, evens) == set(CUSTOMERS[20::2])
    assert (await api.get(f"/v1/segments/{evens}")).json()["status"] == "inactive"


@pytest.mark.asyncio
async def test_cluster_puts_every_buyer_in_exactly_one_segment_deterministically(
    api: httpx.AsyncClient,
) -> None:
    await make_customers(api, *({"external_id": c} for c in CUSTOMERS))
    orders = []
    for i, customer in enumerate(CUSTOMERS[:45]):  # 15 customers never ordered
        for n in range(1 + i % 5):
            day = 1 + (i * 7 + n * 3) % 27
            orders.append(
                (f"o{i}-{n}", customer, f"{(i % 9) * 25 + 5}.00", f"2026-10-{day:02d}T00:00:00Z")
            )
    await place_orders(api, *orders)
    first = await api.post("/v1/segments/cluster", json={"k": 3, "seed": 7, "name_prefix": "Run A"})
    assert first.status_code == 201, first.text
    items = first.json()["items"]
    assert [item["name"] for item in items] == ["Run A 1", "Run A 2", "Run A 3"]
    assert all("k-means cluster" in item["description"] for item in items)
    clusters = [await member_ids(api, item["id"]) for item in items]
    assert sum(len(c) for c in clusters) == 45
    assert set().union(*clusters) == set(CUSTOMERS[:45])
    again = await api.post("/v1/segments/cluster", json={"k": 3, "seed": 7, "name_prefix": "Run B"})
    assert [await member_ids(api, item["id"]) for item in again.json()["items"]] == clusters
    only_money = await api.post(
        "/v1/segments/cluster",
        json={"k": 2, "features": ["monetary"], "seed": 1, "name_prefix": "Spend"},
    )
    assert only_money.status_code == 201, only_money.text
    high, low = [await member_ids(api, item["id"]) for item in only_money.json()["items"]]
    assert len(high) + len(low) == 45
    assert high, "both clusters hold buyers"
    assert low, "both clusters hold buyers"
    assert "revenue" in only_money.json()["items"][0]["description"]


@pytest.mark.asyncio
@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
async def test_cluster_assignment_is_the_nearest_centroid_ties_to_the_first(
    api: httpx.AsyncClient, clean_db: AsyncEngine, weights: list[float]
) -> None:
    """The database's assignment against the same distances computed here, in the same
    order of operations, for centroids taken from the buyers themselves; the fourth repeats
    the first, so it ties with it for every buyer nearest to it and gets none."""
    await make_customers(api, *({"external_id": c} for c in CUSTOMERS[:30]))
    await place_orders(
        api,
        *(
            (
                f"o{i}-{n}",
                customer,
                f"{(i * 37) % 200 + 1}.50",
                f"2026-{1 + i % 10:02d}-0{1 + n}T08:00:00Z",
            )
            for i, customer in enumerate(CUSTOMERS[:30])
            for n in range(1 + i % 4)
        ),
    )
    async with clean_db.connect() as conn, conn.begin():
        await rules_repository.tune(conn)
        stats = await repository.prepare_features(conn)
        features = (
            await conn.execute(
                text("SELECT customer_id, recency, frequency, monetary FROM cluster_features")
            )
        ).all()
        scaling = [
            float(stats[f"{name}_{part}"]) or 1.0
            for name in ("recency", "frequency", "monetary")
            for part in ("mean", "std")
        ]
        scaled = {
            row.customer_id: [
                (value - scaling[2 * i]) / scaling[2 * i + 1] for i, value in enumerate(row[1:])
            ]
            for row in features
        }
        points = list(scaled.values())
        centroids = [points[0], points[11], points[22], points[0]]
        segments = [uuid.uuid4() for _ in centroids]
        added = await repository.assign_clusters(conn, segments, scaling, centroids, weights)
        held: dict[int, uuid.UUID] = dict(
            (
                await conn.execute(
                    text(
                        "SELECT customer_id, segment_id FROM segment_members "
                        "WHERE segment_id = ANY(:s)"
                    ),
                    {"s": segments},
                )
            ).all()
        )
        await conn.rollback()

    def distance(point: list[float], centroid: list[float]) -> float:
        r, f, m = point
        cr, cf, cm = centroid
        return weights[0] * (r - cr) ** 2 + weights[1] * (f - cf) ** 2 + weights[2] * (m - cm) ** 2

    expected = {}
    for customer, point in scaled.items():
        distances = [distance(point, centroid) for centroid in centroids]
        expected[customer] = segments[distances.index(min(distances))]
    assert len(scaled) == 30
    assert held == expected
    assert segments[3] not in held.values()
    assert sum(added.values()) == 30


@pytest.mark.asyncio
async def test_bad_input_is_refused_and_changes_nothing(
    api: httpx.AsyncClient, clean_db: AsyncEngine, row_counts: Snapshot
) -> None:
    twos, threes, _ = await store(api)
    await place_orders(
        api,
        ("o1", "c00", "5.00", "2026-10-01T00:00:00Z"),
        ("o2", "c01", "9.00", "2026-10-02T00:00:00Z"),
    )
    tiny = await with_members(api, "Tiny", CUSTOMERS[:2])
    rule = await make_rule_segment(api, "Rule", {"field": "orders_count", "op": "gte", "value": 1})
    inactive = await with_members(api, "Off", CUSTOMERS[:3])
    await api.post(f"/v1/segments/{inactive}/deactivate")
    await make_segment(api, "Taken")
    await make_segment(api, "Taken 1")  # as the first of clusters named "Taken"
    await settled(clean_db)
    before = await row_counts()
    missing = str(uuid.uuid4())

    cases: list[tuple[str, str, dict[str, Any], int, str | None]] = [
        (
            "post",
            "/v1/segments/combine",
            {"operation": "union", "segment_ids": [twos, missing], "name": "N"},
            422,
            "/segment_ids/1",
        ),
        (
            "post",
            "/v1/segments/combine",
            {"operation": "union", "segment_ids": [twos, twos], "name": "N"},
            422,
            "/segment_ids/1",
        ),
        (
            "post",
            "/v1/segments/combine",
            {"operation": "union", "segment_ids": [twos], "name": "N"},
            422,
            "/segment_ids",
        ),
        (
            "post",
            "/v1/segments/combine",
            {"operation": "xor", "segment_ids": [twos, threes], "name": "N"},
            422,
            "/operation",
        ),
        (
            "post",
            "/v1/segments/combine",
            {"operation": "union", "segment_ids": [twos, threes], "name": "taken"},
            409,
            None,
        ),
        (
            "post",
            "/v1/segments/combine",
            {"operation": "union", "segment_ids": [twos, threes]},
            422,
            "/name",
        ),
        (
            "post",
            f"/v1/segments/{twos}/split",
            {"parts": [{"name": "A", "weight": 0}, {"name": "B", "weight": 0}]},
            422,
            "/parts",
        ),
        (
            "post",
            f"/v1/segments/{twos}/split",
            {"parts": [{"name": "A", "weight": -1}, {"name": "B", "weight": 2}]},
            422,
            "/parts/0/weight",
        ),
        (
            "post",
            f"/v1/segments/{twos}/split",
            {"parts": [{"name": "A", "weight": "1"}, {"name": "B", "weight": 2}]},
            422,
            "/parts/0/weight",
        ),
        (
            "post",
            f"/v1/segments/{twos}/split",
            {"parts": [{"name": "A", "weight": 1}]},
            422,
            "/parts",
        ),
        (
            "post",
            f"/v1/segments/{twos}/split",
            {"parts": [{"name": "A", "weight": 1}, {"name": "a", "weight": 1}]},
            422,
            "/parts/1/name",
        ),
        (
            "post",
            f"/v1/segments/{tiny}/split",
            {
                "parts": [
                    {"name": "A", "weight": 1},
                    {"name": "B", "weight": 1},
                    {"name": "C", "weight": 1},
                ]
            },
            422,
            "/parts",
        ),
        (
            "post",
            f"/v1/segments/{twos}/split",
            {"parts": [{"name": "New", "weight": 1}, {"name": "TAKEN", "weight": 1}]},
            409,
            None,
        ),
        (
            "post",
            f"/v1/segments/{missing}/split",
            {"parts": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}]},
            404,
            None,
        ),
        ("post", f"/v1/segments/{twos}/reduce", {"max_size": 0, "name": "R"}, 422, "/max_size"),
        (
            "post",
            f"/v1/segments/{twos}/reduce",
            {"max_size": 5, "order_by": "name", "name": "R"},
            422,
            "/order_by",
        ),
        ("post", f"/v1/segments/{twos}/reduce", {"max_size": 5, "name": "Taken"}, 409, None),
        ("post", f"/v1/segments/{missing}/reduce", {"max_size": 5, "name": "R"}, 404, None),
        ("post", "/v1/segments/compare", {"segment_ids": [twos, missing]}, 422, "/segment_ids/1"),
        ("post", "/v1/segments/compare", {"segment_ids": [twos, twos]}, 422, "/segment_ids/1"),
        ("post", "/v1/segments/deduplicate", {"segment_ids": [twos, rule]}, 409, None),
        (
            "post",
            "/v1/segments/deduplicate",
            {"segment_ids": [rule, twos, rule]},
            422,
            "/segment_ids/2",
        ),
        ("post", "/v1/segments/deduplicate", {"segment_ids": [inactive, rule]}, 409, None),
        (
            "post",
            "/v1/segments/deduplicate",
            {"segment_ids": [missing, twos]},
            422,
            "/segment_ids/0",
        ),
        ("post", "/v1/segments/cluster", {"k": 1}, 422, "/k"),
        ("post", "/v1/segments/cluster", {"k": 3}, 422, "/k"),  # two buyers
        ("post", "/v1/segments/cluster", {"k": 2, "features": []}, 422, "/features"),
        (
            "post",
            "/v1/segments/cluster",
            {"k": 2, "features": ["monetary", "monetary"]},
            422,
            "/features/1",
        ),
        ("post", "/v1/segments/cluster", {"k": 2, "features": ["age"]}, 422, "/features/0"),
        ("post", "/v1/segments/cluster", {"k": 2, "name_prefix": "Taken"}, 409, None),
        ("post", "/v1/segments/cluster", {"k": "2"}, 422, "/k"),
    ]
    for method, path, body, status, pointer in cases:
        response = await api.request(method, path, json=body)
        problem = assert_problem(response, status)
        if pointer is not None:
            assert pointer in [e["pointer"] for e in problem["errors"]], (path, body, problem)
    assert await row_counts() == before


@pytest.mark.asyncio
async def test_idempotency_key_replays_a_creating_operation(
    api: httpx.AsyncClient, clean_db: AsyncEngine, row_counts: Snapshot
) -> None:
    twos, threes, _ = await store(api)
    await settled(clean_db)
    body = {"operation": "intersect", "segment_ids": [twos, threes], "name": "Both"}
    headers = {"Idempotency-Key": "combine-1"}
    first = await api.post("/v1/segments/combine", json=body, headers=headers)
    await settled(clean_db)
    counts = await row_counts()
    again = await api.post("/v1/segments/combine", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert await row_counts() == counts


@pytest.mark.asyncio
async def test_deduplicate_beside_order_changes_of_the_same_customers(
    api: httpx.AsyncClient,
) -> None:
    """Deduplicate marks the segments' KPIs stale in id order, as an order's change marks a
    customer's segments: in the list's order the two deadlocked (a 503 to one of them)."""
    customers = CUSTOMERS[:20]
    await make_customers(api, *({"external_id": c} for c in customers))
    segments = sorted([await with_members(api, f"Copy {i}", customers) for i in range(4)])
    for round_ in range(6):
        for segment_id in segments:
            await api.post(f"/v1/segments/{segment_id}/members", json={"external_ids": customers})
        answers = await asyncio.gather(
            api.post("/v1/segments/deduplicate", json={"segment_ids": segments[::-1]}),
            *(
                api.put(
                    f"/v1/orders/o{round_}-{i}",
                    json={
                        "customer_external_id": customers[i],
                        "total": "1.00",
                        "placed_at": "2026-01-01T00:00:00Z",
                    },
                )
                for i in range(3)
            ),
        )
        assert [a.status_code for a in answers] == [200, 201, 201, 201], [a.text for a in answers]

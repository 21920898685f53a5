"""SQL of the target-group operations: every one a set-based statement over memberships."""

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import insert, literal, nulls_last, select
from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.rules.compile import AnySelect
from segments_shared.changes import prepare_staging, staged_parts_sql
from segments_shared.db.engine import driver_connection
from segments_shared.db.models import SegmentMember


def _union(sources: int) -> str:
    """Each segment's primary key range is an ordered subquery behind OFFSET 0, so that
    PostgreSQL merges them in customer order and keeps the first of each customer (0.35 s
    for two 500,000-member segments, where grouping by customer hashed and sorted 1,000,000
    rows: 1.06 s, measured; DISTINCT ON is never hashed). Inserted in customer order, the
    indexes fill in order. Only the number of segments shapes the text."""
    ranges = " UNION ALL ".join(
        f"(SELECT customer_id FROM segment_members WHERE segment_id = ${i + 2}"
        " ORDER BY customer_id OFFSET 0)"
        for i in range(sources)
    )
    return f"""
        INSERT INTO segment_members (segment_id, customer_id)
        SELECT DISTINCT ON (customer_id) $1::uuid, customer_id FROM ({ranges}) AS members
        ORDER BY customer_id
    """


def _intersect(sources: int) -> str:
    """Members of the first segment joined to each other's on the customer: every input is a
    primary key range in customer order, so the joins merge without sorting (0.2 s for two
    500,000-member segments, where grouping the 1,000,000 rows by customer took 0.9 s,
    measured). Only the number of segments shapes the text; the ids are parameters."""
    joins = "".join(
        f" JOIN segment_members m{i}"
        f" ON m{i}.segment_id = ${i + 2} AND m{i}.customer_id = m0.customer_id"
        for i in range(1, sources)
    )
    return f"""
        INSERT INTO segment_members (segment_id, customer_id)
        SELECT $1, m0.customer_id FROM segment_members m0{joins}
        WHERE m0.segment_id = $2
        ORDER BY m0.customer_id
    """


def _difference(sources: int) -> str:
    """Members of the first segment with no match in any other. Each other segment is an
    ordered subquery behind OFFSET 0, so PostgreSQL sees its primary key range in customer
    order and merge-anti-joins it (0.2 s for two 500,000-member segments, where the same
    NOT EXISTS hashed one side and sorted the result: 0.85 s, measured). Only the number of
    segments shapes the text; the ids are parameters."""
    joins = "".join(
        f" LEFT JOIN (SELECT customer_id FROM segment_members WHERE segment_id = ${i + 2}"
        f" ORDER BY customer_id OFFSET 0) m{i} ON m{i}.customer_id = m0.customer_id"
        for i in range(1, sources)
    )
    absent = "".join(f" AND m{i}.customer_id IS NULL" for i in range(1, sources))
    return f"""
        INSERT INTO segment_members (segment_id, customer_id)
        SELECT $1, m0.customer_id FROM segment_members m0{joins}
        WHERE m0.segment_id = $2{absent}
        ORDER BY m0.customer_id
    """


# Members in the order of a stable hash of (customer, seed); part i takes the positions from
# its lower bound ($3[i]) to the next one. First the member at each lower bound: one sort of
# the members by (hash, customer). Positions past the last member have none.
_SPLIT_BOUNDS = """
    SELECT r.h, r.customer_id
    FROM unnest($3::bigint[]) WITH ORDINALITY AS b(low, part)
    JOIN (
        SELECT hashtextextended(customer_id::text, $2) AS h, customer_id,
               row_number() OVER (ORDER BY hashtextextended(customer_id::text, $2),
                                           customer_id) - 1 AS position
        FROM segment_members WHERE segment_id = $1
    ) AS r ON r.position = b.low
    ORDER BY b.part
"""
# Then every member, read in customer order from the primary key, joins the part of the last
# bound at or below its (hash, customer): width_bucket() over the bounds' hashes, unless its
# hash equals that bound's (a collision of two customers' hashes), where the pairs are
# compared. Written in customer order, without sorting the members a second time: the parts
# interleave, each appending at its own right edge of the primary key. A 500,000-member 50/50
# split took 1.73 to 1.77 s through the service, against 1.85 to 2.08 s sorting the members
# by part (bench/rules_targets.py, docs/benchmarks.md).
_SPLIT = """
    INSERT INTO segment_members (segment_id, customer_id)
    SELECT ($5::uuid[])[
               CASE WHEN ($3::bigint[])[width_bucket(m.h, $3::bigint[])] = m.h
               THEN (SELECT count(*)::int FROM unnest($3::bigint[], $4::bigint[]) AS b(h, c)
                     WHERE (b.h, b.c) <= (m.h, m.customer_id))
               ELSE width_bucket(m.h, $3::bigint[]) END
           ],
           m.customer_id
    FROM (
        SELECT hashtextextended(customer_id::text, $2) AS h, customer_id
        FROM segment_members WHERE segment_id = $1
        ORDER BY customer_id OFFSET 0
    ) AS m
    ORDER BY m.customer_id
"""
# The order of compile.SortKey("random"): stable_hash() descending, then customer id.
_SAMPLE = """
    INSERT INTO segment_members (segment_id, customer_id)
    SELECT $1, customer_id FROM (
        SELECT customer_id FROM segment_members WHERE segment_id = $2
        ORDER BY hashtextextended(customer_id::text, $3) DESC, customer_id
        LIMIT $4
    ) AS kept
    ORDER BY customer_id
"""
# Sizes (the diagonal, a = b) and the intersection of every pair, in one snapshot. A size is
# the segment's member_count, which every membership change updates in its own transaction,
# so in any snapshot it equals the members counted (a count scanned 500,000 keys per
# segment: 0.1 to 0.2 s each, measured). Each pair is its own subquery on two single
# segments, so PostgreSQL merge-joins their primary key ranges, both in customer order: 0.1 s
# for two 500,000-member segments, where one join over all of them hashed 1,000,000 rows
# (measured).
_OVERLAPS = """
    SELECT s.id AS a, s.id AS b, s.member_count AS both
    FROM segments s WHERE s.id = ANY($1::uuid[])
    UNION ALL
    SELECT p.a, p.b,
           (SELECT count(*) FROM segment_members x
            JOIN segment_members y ON y.customer_id = x.customer_id AND y.segment_id = p.b
            WHERE x.segment_id = p.a)
    FROM unnest($2::uuid[], $3::uuid[]) AS p(a, b)
"""

# One listed segment ($1) loses the customers the segments before it ($2) hold; rows a
# concurrent erasure holds are skipped (the erasure removes them itself). The rows are
# found with one hashed semi-join and deleted by their tuple ids, which the row locks keep
# in place: 0.55 s for 166,666 of 333,334, where grouping every listed membership by
# customer and joining back took 1.6 to 2.0 s (measured).
_DEDUPLICATE = f"""
    WITH removable AS (
        SELECT m.ctid AS tid FROM segment_members m
        WHERE m.segment_id = $1 AND EXISTS (
            SELECT 1 FROM segment_members e
            WHERE e.segment_id = ANY($2::uuid[]) AND e.customer_id = m.customer_id
        )
        FOR UPDATE OF m SKIP LOCKED
    ),
    removed AS (
        DELETE FROM segment_members WHERE ctid = ANY(ARRAY(SELECT tid FROM removable))
        RETURNING customer_id
    ),
    staged AS ({staged_parts_sql("$1", False, "removed")})
    SELECT count(*) FROM removed
"""

# k-means input: log-scaled recency (whole days since the last placed order), frequency
# (placed orders) and monetary value (their revenue) of every customer with a placed order.
_CREATE_FEATURES = """
    CREATE TEMPORARY TABLE cluster_features (
        customer_id bigint NOT NULL,
        recency float8 NOT NULL,
        frequency float8 NOT NULL,
        monetary float8 NOT NULL
    ) ON COMMIT DROP
"""
# In double precision: extract() gives a numeric, whose ln() took 2 s of the 3.5 s over
# 740,000 buyers (measured). Grouped in customer order from the index on (customer_id,
# placed_at), which carries status and total: hashing the 4,500,000 placed orders took 3.8 s
# and spilled to disk, where this takes 1.8 s (measured); prepare_features() turns hashing
# off for it.
_FILL_FEATURES = """
    INSERT INTO cluster_features (customer_id, recency, frequency, monetary)
    SELECT customer_id,
           ln(1 + greatest(floor(extract(epoch FROM now() - max(placed_at))::float8 / 86400), 0)),
           ln(1 + count(*)::float8),
           ln(1 + sum(total)::float8)
    FROM orders WHERE status = 'placed'
    GROUP BY customer_id
"""
_FEATURE_STATS = """
    SELECT count(*) AS buyers,
           avg(recency) AS recency_mean, stddev_pop(recency) AS recency_std,
           avg(frequency) AS frequency_mean, stddev_pop(frequency) AS frequency_std,
           avg(monetary) AS monetary_mean, stddev_pop(monetary) AS monetary_std
    FROM cluster_features
"""
_FEATURE_SAMPLE = """
    SELECT recency, frequency, monetary FROM cluster_features
    ORDER BY hashtextextended(customer_id::text, $1), customer_id
    LIMIT $2
"""


def _assign(clusters: int) -> str:
    """Every buyer joins the nearest centroid (in standardised units, over the chosen
    features; ties go to the first cluster), each cluster being a new segment ($1). The
    distances to the k centroids are one array per buyer, and the first position of its
    least element is the cluster: reading 740,000 buyers into 4 clusters took 1.5 s, where a
    sorted unnest() of the centroids per buyer took 1.9 s (measured). Only k shapes the
    text."""
    distances = ", ".join(
        f"$11 * (s.r - ($8::float8[])[{i}]) ^ 2 + $12 * (s.f - ($9::float8[])[{i}]) ^ 2"
        f" + $13 * (s.m - ($10::float8[])[{i}]) ^ 2"
        for i in range(1, clusters + 1)
    )
    least = ", ".join(f"x.d[{i}]" for i in range(1, clusters + 1))
    return f"""
    WITH scaled AS (
        SELECT customer_id,
               (recency - $2) / $3 AS r, (frequency - $4) / $5 AS f, (monetary - $6) / $7 AS m
        FROM cluster_features
    ),
    added AS (
        INSERT INTO segment_members (segment_id, customer_id)
        SELECT ($1::uuid[])[array_position(x.d, LEAST({least}))], s.customer_id
        FROM scaled s
        -- OFFSET 0: computed once per buyer, not once per use of x.d.
        CROSS JOIN LATERAL (SELECT ARRAY[{distances}] AS d OFFSET 0) x
        ORDER BY s.customer_id
        RETURNING segment_id
    )
    SELECT segment_id, count(*) AS added FROM added GROUP BY segment_id
"""


def _inserted(status: str) -> int:
    """Rows an INSERT wrote, from its command status ("INSERT 0 <rows>")."""
    return int(status.rsplit(" ", 1)[1])


async def combine(
    conn: AsyncConnection, operation: str, target: uuid.UUID, sources: Sequence[uuid.UUID]
) -> int:
    driver = await driver_connection(conn)
    statement = {"union": _union, "intersect": _intersect, "difference": _difference}[operation]
    status = await driver.execute(statement(len(sources)), target, *sources)
    return _inserted(status)


async def split(
    conn: AsyncConnection,
    source: uuid.UUID,
    seed: int,
    lower_bounds: Sequence[int],
    parts: Sequence[uuid.UUID],
) -> dict[uuid.UUID, int]:
    """Each part's count: the positions of its range that exist (a member erased since the
    caller counted shortens the last ranges). Nothing changes the members between the two
    statements: the caller holds the segment (SHARE) and the member-insert lock, which a
    customer's erasure waits for."""
    driver = await driver_connection(conn)
    rows = await driver.fetch(_SPLIT_BOUNDS, source, seed, list(lower_bounds))
    total = await deal(conn, source, seed, [(row["h"], row["customer_id"]) for row in rows], parts)
    upper = [*lower_bounds[1:], total]
    return {
        part: max(0, min(high, total) - low)
        for part, low, high in zip(parts, lower_bounds, upper, strict=True)
    }


async def deal(
    conn: AsyncConnection,
    source: uuid.UUID,
    seed: int,
    bounds: Sequence[tuple[int, int]],
    parts: Sequence[uuid.UUID],
) -> int:
    """Write each member of `source` into the part of the last bound (hash, customer) at or
    below its own, in that order; `bounds` ascending, one per part from the first, the first
    at or below every member. Returns the rows written."""
    driver = await driver_connection(conn)
    hashes = [hash_ for hash_, _ in bounds]
    customers = [customer for _, customer in bounds]
    status = await driver.execute(_SPLIT, source, seed, hashes, customers, list(parts))
    return _inserted(status)


async def insert_selected(
    conn: AsyncConnection, target: uuid.UUID, selection: AnySelect, limit: int
) -> int:
    """The first `limit` customers of a selection of (customer_id, sort_key), highest key
    first, ties to the longest-standing customer."""
    ranked = selection.subquery()
    top = (
        select(ranked.c.customer_id)
        .order_by(nulls_last(ranked.c.sort_key.desc()), ranked.c.customer_id)
        .limit(limit)
        .subquery()
    )
    statement = insert(SegmentMember).from_select(
        ["segment_id", "customer_id"],
        select(literal(target), top.c.customer_id).order_by(top.c.customer_id),
    )
    result = await conn.execute(statement)
    return int(result.rowcount)


async def insert_sample(
    conn: AsyncConnection, target: uuid.UUID, source: uuid.UUID, seed: int, limit: int
) -> int:
    """The first `limit` members of `source` by a size limit's `random` order (highest
    stable hash first, ties to the longest-standing customer), from the membership alone:
    0.5 s for 100,000 of 500,000 where the rule compiler's selection, which starts from the
    customers, took 1.0 s (measured)."""
    driver = await driver_connection(conn)
    status = await driver.execute(_SAMPLE, target, source, seed, limit)
    return _inserted(status)


async def overlaps(
    conn: AsyncConnection, ids: Sequence[uuid.UUID]
) -> tuple[dict[uuid.UUID, int], dict[tuple[uuid.UUID, uuid.UUID], int]]:
    """Each segment's size, and the intersection of every pair keyed (smaller id, larger
    id)."""
    driver = await driver_connection(conn)
    pairs = [(min(a, b), max(a, b)) for i, a in enumerate(ids) for b in ids[i + 1 :]]
    firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
    sizes: dict[uuid.UUID, int] = {}
    both: dict[tuple[uuid.UUID, uuid.UUID], int] = {}
    for row in await driver.fetch(_OVERLAPS, list(ids), firsts, seconds):
        if row["a"] == row["b"]:
            sizes[row["a"]] = row["both"]
        else:
            both[(row["a"], row["b"])] = row["both"]
    return sizes, both


async def deduplicate(conn: AsyncConnection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Each segment after the first loses what an earlier one holds; the count each lost
    (who, staged for the change's events: segments_shared/changes.py).
    Whether an earlier one lost a customer too does not matter: it lost it to a segment
    before it, which the later one also sees."""
    await prepare_staging(conn)
    driver = await driver_connection(conn)
    return {
        segment_id: await driver.fetchval(_DEDUPLICATE, segment_id, list(ids[:index]))
        for index, segment_id in enumerate(ids)
        if index > 0
    }


async def prepare_features(conn: AsyncConnection) -> Mapping[str, Any]:
    """Compute every buyer's features into `cluster_features`; returns their statistics."""
    # The caller tuned the transaction (rules/repository.py): serial plans, so the same sums
    # in the same order and the same scaling every time.
    driver = await driver_connection(conn)
    await driver.execute(_CREATE_FEATURES)
    await driver.execute("SELECT set_config('enable_hashagg', 'off', true)")
    await driver.execute(_FILL_FEATURES)
    await driver.execute("SELECT set_config('enable_hashagg', 'on', true)")
    stats: Mapping[str, Any] = await driver.fetchrow(_FEATURE_STATS)
    return stats


async def feature_sample(conn: AsyncConnection, seed: int, size: int) -> list[tuple[float, ...]]:
    driver = await driver_connection(conn)
    rows = await driver.fetch(_FEATURE_SAMPLE, seed, size)
    return [tuple(row) for row in rows]


async def assign_clusters(
    conn: AsyncConnection,
    segments: Sequence[uuid.UUID],
    scaling: Sequence[float],
    centroids: Sequence[Sequence[float]],
    weights: Sequence[float],
) -> dict[uuid.UUID, int]:
    """`scaling`: mean and standard deviation of each feature; `centroids`: one row per
    cluster in standardised units; `weights`: 1 for a chosen feature, 0 otherwise."""
    driver = await driver_connection(conn)
    columns = [[centroid[index] for centroid in centroids] for index in range(3)]
    rows = await driver.fetch(_assign(len(centroids)), list(segments), *scaling, *columns, *weights)
    return {row["segment_id"]: row["added"] for row in rows}

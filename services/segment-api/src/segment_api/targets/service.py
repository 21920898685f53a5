"""Target-group operations (docs/contract.md#target-group-operations). Each creating
operation makes new manual segments and leaves its sources as they were; deduplicate edits
the listed segments. Every membership is computed by one set-based statement; only the
k-means fit runs in Python."""

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.problems import ProblemException, not_found, repeat_errors
from segment_api.rules import repository as rules_repository
from segment_api.rules.compile import SORTS_ON_ORDERS, RuleCompiler, SortKey, random_seed
from segment_api.rules.definition import is_rule
from segment_api.rules.nodes import Membership
from segment_api.segments import locks
from segment_api.segments import repository as segments_repository
from segment_api.segments.schemas import Segment
from segment_api.segments.service import announce_created, get_segment
from segment_api.targets import cluster, repository
from segment_api.targets.schemas import (
    ClusterRequest,
    CombineRequest,
    CompareRequest,
    Comparison,
    Deduplicated,
    DeduplicateRequest,
    DeduplicateResult,
    Overlap,
    ReduceRequest,
    SegmentSize,
    SplitRequest,
)
from segments_shared.changes import Staged, changes_of

MAX_DESCRIPTION = 2000


def _unprocessable(errors: list[dict[str, str]]) -> ProblemException:
    return ProblemException(422, errors[0]["detail"], errors=errors)


def _check_unique(ids: Sequence[uuid.UUID]) -> None:
    errors = repeat_errors(ids, lambda index: f"/segment_ids/{index}", "repeats")
    if errors:
        raise _unprocessable(errors)


async def _segments(
    conn: AsyncConnection, ids: Sequence[uuid.UUID], mode: locks.Mode
) -> dict[uuid.UUID, Mapping[str, Any]]:
    """The listed segments, locked; 422 naming each id that is not a segment."""
    _check_unique(ids)
    await rules_repository.tune(conn)
    found = await locks.lock_segments(conn, ids, mode)
    errors = [
        {"pointer": f"/segment_ids/{index}", "detail": "no segment has this id"}
        for index, segment_id in enumerate(ids)
        if segment_id not in found
    ]
    if errors:
        raise _unprocessable(errors)
    return found


async def _source(
    conn: AsyncConnection, segment_id: uuid.UUID, mode: locks.Mode
) -> Mapping[str, Any]:
    await rules_repository.tune(conn)
    found = await locks.lock_segments(conn, [segment_id], mode)
    if segment_id not in found:
        raise not_found("segment", segment_id)
    return found[segment_id]


async def _new_segment(conn: AsyncConnection, name: str, description: str | None) -> uuid.UUID:
    segment_id = await segments_repository.insert_segment(
        conn,
        {
            "name": name,
            "description": description[:MAX_DESCRIPTION] if description else None,
            "kind": "user",
            "definition": {"type": "manual"},
        },
    )
    if segment_id is None:
        raise ProblemException(409, f"a segment named {name!r} already exists")
    return segment_id


def _names(sources: Mapping[uuid.UUID, Mapping[str, Any]], ids: Sequence[uuid.UUID]) -> str:
    return ", ".join(repr(sources[segment_id]["name"]) for segment_id in ids)


async def combine(conn: AsyncConnection, body: CombineRequest) -> Segment:
    sources = await _segments(conn, body.segment_ids, "KEY SHARE")
    description = body.description or (
        f"{body.operation.capitalize()} of {_names(sources, body.segment_ids)}"
        if body.operation != "difference"
        else f"{sources[body.segment_ids[0]]['name']!r} less "
        f"{_names(sources, body.segment_ids[1:])}"
    )
    target = await _new_segment(conn, body.name, description)
    await locks.lock_member_inserts(conn)
    added = await repository.combine(conn, body.operation, target, body.segment_ids)
    return await announce_created(conn, target, added, "combined")


def part_sizes(members: int, weights: Sequence[float]) -> list[int]:
    """Sizes following the weights to within one member (largest remainders get the
    leftovers, ties to the earlier part); they add up to `members`."""
    exact = [Fraction(Decimal(repr(weight))) for weight in weights]
    total = sum(exact)
    quotas = [members * weight / total for weight in exact]
    sizes = [int(quota) for quota in quotas]
    leftover = members - sum(sizes)
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - sizes[i]), i))
    for index in by_remainder[:leftover]:
        sizes[index] += 1
    return sizes


async def split(conn: AsyncConnection, segment_id: uuid.UUID, body: SplitRequest) -> list[Segment]:
    errors = []
    first: dict[str, int] = {}
    for index, part in enumerate(body.parts):
        key = part.name.lower()
        if key in first:
            errors.append(
                {"pointer": f"/parts/{index}/name", "detail": f"repeats /parts/{first[key]}/name"}
            )
        first.setdefault(key, index)
    if sum(part.weight for part in body.parts) <= 0:
        errors.append(
            {"pointer": "/parts", "detail": "the weights add up to 0; give a part a weight above 0"}
        )
    if errors:
        raise _unprocessable(errors)
    # SHARE: the membership stays as counted until the split is written.
    source = await _source(conn, segment_id, "SHARE")
    members = int(source["member_count"])
    if members < len(body.parts):
        raise _unprocessable(
            [
                {
                    "pointer": "/parts",
                    "detail": f"the segment has {members} members: too few for "
                    f"{len(body.parts)} parts",
                }
            ]
        )
    sizes = part_sizes(members, [part.weight for part in body.parts])
    lower_bounds = [sum(sizes[:index]) for index in range(len(sizes))]
    parts = []
    for index, part in enumerate(body.parts):
        description = (
            f"Part {index + 1} of {len(body.parts)} of {source['name']!r} "
            f"(weight {part.weight:g}, seed {body.seed!r})"
        )
        parts.append(await _new_segment(conn, part.name, description))
    await locks.lock_member_inserts(conn)
    added = await repository.split(
        conn, segment_id, random_seed("split:" + body.seed), lower_bounds, parts
    )
    return [await announce_created(conn, part, added.get(part, 0), "split") for part in parts]


async def reduce(conn: AsyncConnection, segment_id: uuid.UUID, body: ReduceRequest) -> Segment:
    source = await _source(conn, segment_id, "KEY SHARE")
    order = body.order_by.replace("_", " ")
    description = body.description or (
        f"At most {body.max_size} members of {source['name']!r} by {order}"
        + (f" (seed {body.seed!r})" if body.order_by == "random" else "")
    )
    target = await _new_segment(conn, body.name, description)
    seed = random_seed("reduce:" + body.seed)
    if body.order_by == "random":
        # The sort key is the member's own id: read from the membership alone.
        await locks.lock_member_inserts(conn)
        added = await repository.insert_sample(conn, target, segment_id, seed, body.max_size)
        return await announce_created(conn, target, added, "reduced")
    members = Membership(segment_id, True, "")
    strategy = await rules_repository.strategy_for(
        conn, members, orders=body.order_by in SORTS_ON_ORDERS
    )
    sort = SortKey(body.order_by, seed)
    compiler = RuleCompiler(members, strategy=strategy, sort=sort)
    await locks.lock_member_inserts(conn)
    async with rules_repository.planned_for(conn, strategy):
        added = await repository.insert_selected(conn, target, compiler.selection(), body.max_size)
    return await announce_created(conn, target, added, "reduced")


async def compare(conn: AsyncConnection, body: CompareRequest) -> Comparison:
    sources = await _segments(conn, body.segment_ids, "KEY SHARE")
    sizes, both = await repository.overlaps(conn, body.segment_ids)
    ids = body.segment_ids
    pairs = []
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            intersection = both.get((min(a, b), max(a, b)), 0)
            union = sizes.get(a, 0) + sizes.get(b, 0) - intersection
            pairs.append(
                Overlap(
                    segment_ids=(a, b),
                    intersection=intersection,
                    union=union,
                    jaccard=intersection / union if union else None,
                )
            )
    return Comparison(
        segments=[
            SegmentSize(segment_id=a, name=sources[a]["name"], size=sizes.get(a, 0)) for a in ids
        ],
        pairs=pairs,
    )


async def deduplicate(conn: AsyncConnection, body: DeduplicateRequest) -> DeduplicateResult:
    sources = await _segments(conn, body.segment_ids, "NO KEY UPDATE")
    # Deduplicating removes from each later segment what an earlier one holds
    # (docs/contract.md#target-group-operations): the first is only read, so it may be any
    # segment. A later one loses members, which a rule segment cannot (its rule decides them,
    # and would put them back). An inactive manual segment can: it keeps its members and
    # takes edits, as `/members/remove` does; it is only not refreshed or synced.
    conflicts = [
        f"{sources[segment_id]['name']!r} (/segment_ids/{index}) is a rule segment: its rule "
        "decides its members; only the first segment of the list may be one (it is only read)"
        for index, segment_id in enumerate(body.segment_ids)
        if index > 0 and is_rule(sources[segment_id]["definition"])
    ]
    if conflicts:
        raise ProblemException(409, "; ".join(conflicts))
    removed = await repository.deduplicate(conn, body.segment_ids)
    # Recorded in id order: the segments' rows are updated in the order every other
    # membership writer takes them (segments/locks.py), where the list's order could deadlock.
    changes = changes_of(conn)
    for segment_id in sorted(body.segment_ids):
        await changes.members_changed(
            segment_id, entered=0, exited=Staged(removed.get(segment_id, 0)), cause="deduplicated"
        )
    items = []
    for segment_id in body.segment_ids:
        count = removed.get(segment_id, 0)
        after = await get_segment(conn, segment_id)
        items.append(
            Deduplicated(
                segment_id=segment_id,
                name=after.name,
                removed=count,
                member_count=after.member_count,
            )
        )
    return DeduplicateResult(items=items)


async def cluster_buyers(conn: AsyncConnection, body: ClusterRequest) -> list[Segment]:
    errors = [
        {"pointer": f"/features/{index}", "detail": "repeats an earlier feature"}
        for index, feature in enumerate(body.features)
        if feature in body.features[:index]
    ]
    if errors:
        raise _unprocessable(errors)
    # Before reading the buyers: an erasure waits for this insert rather than race it.
    await rules_repository.tune(conn)
    await locks.lock_member_inserts(conn)
    stats = await repository.prepare_features(conn)
    buyers = int(stats["buyers"])
    if body.k > buyers:
        raise _unprocessable(
            [
                {
                    "pointer": "/k",
                    "detail": f"k must not exceed the {buyers} customers with placed orders",
                }
            ]
        )
    means = [float(stats[f"{name}_mean"]) for name in cluster.FEATURES]
    # A feature without spread is left unscaled (every buyer has the same value).
    stds = [float(stats[f"{name}_std"] or 0) or 1.0 for name in cluster.FEATURES]
    scaling = cluster.Scaling(
        means=(means[0], means[1], means[2]), stds=(stds[0], stds[1], stds[2])
    )
    weights = [1.0 if name in body.features else 0.0 for name in cluster.FEATURES]
    sample = await repository.feature_sample(
        conn, random_seed(f"cluster:{body.seed}"), cluster.SAMPLE_SIZE
    )
    fitted = await asyncio.to_thread(cluster.fit, sample, scaling, weights, body.k, body.seed)
    segments = []
    for index, centroid in enumerate(fitted.centroids):
        description = (
            f"k-means cluster {index + 1} of {body.k} (seed {body.seed}) over "
            f"{', '.join(body.features)}: {cluster.describe(centroid, scaling, weights)}"
        )
        segments.append(await _new_segment(conn, f"{body.name_prefix} {index + 1}", description))
    added = await repository.assign_clusters(
        conn,
        segments,
        [value for pair in zip(scaling.means, scaling.stds, strict=True) for value in pair],
        fitted.centroids,
        weights,
    )
    return [
        await announce_created(conn, segment, added.get(segment, 0), "clustered")
        for segment in segments
    ]

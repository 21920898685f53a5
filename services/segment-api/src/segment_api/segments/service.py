import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.events import SOURCE
from segment_api.fields import money_str
from segment_api.pagination import decode_created_cursor, decode_key_cursor, encode_cursor
from segment_api.problems import ProblemException, field_error, not_found
from segment_api.rules import queue
from segment_api.rules import repository as rules_repository
from segment_api.rules.definition import is_rule
from segment_api.rules.service import check_definition
from segment_api.segments import repository
from segment_api.segments.schemas import (
    DuplicateRequest,
    HistoryEntry,
    Member,
    MembersAdded,
    MembersRemoved,
    MembersRequest,
    Segment,
    SegmentCreate,
    SegmentMetrics,
    SegmentUpdate,
)
from segments_shared.apikeys import ApiKeyInfo
from segments_shared.bus.outbox import add_event
from segments_shared.events import (
    MembersChanged,
    SegmentActivated,
    SegmentCreated,
    SegmentDeactivated,
    SegmentDeleted,
    SegmentMembersChanged,
    SegmentRef,
    SegmentUpdated,
)
from segments_shared.observability import current_correlation_id
from segments_shared.staleness import mark_segments_stale

SegmentEvent = SegmentCreated | SegmentUpdated | SegmentActivated | SegmentDeactivated


def metrics_of(row: Mapping[str, Any]) -> SegmentMetrics:
    if row["computed_at"] is None:
        return SegmentMetrics(stale=True)
    latency = row["order_latency_days"]
    return SegmentMetrics(
        customers=row["customers"],
        reachable_customers=row["reachable_customers"],
        total_revenue=money_str(row["total_revenue"]),
        total_orders=row["total_orders"],
        average_order_value=money_str(row["average_order_value"]),
        customer_lifetime_value=money_str(row["customer_lifetime_value"]),
        order_latency_days=float(latency) if latency is not None else None,
        computed_at=row["computed_at"],
        stale=bool(row["stale"]),
    )


def segment_of(row: Mapping[str, Any]) -> Segment:
    return Segment(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        kind=row["kind"],
        definition=row["definition"],
        active=row["active"],
        status="inactive" if not row["active"] else row["status"],
        member_count=row["member_count"],
        metrics=metrics_of(row),
        delivery=row["delivery"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def get_segment(conn: AsyncConnection, segment_id: uuid.UUID) -> Segment:
    row = await repository.get_view(conn, segment_id)
    if row is None:
        raise not_found("segment", segment_id)
    return segment_of(row)


async def create_segment(conn: AsyncConnection, body: SegmentCreate, key: ApiKeyInfo) -> Segment:
    if body.kind == "custom" and not key.allows("admin"):
        raise ProblemException(403, "creating a custom segment needs the admin scope")
    definition = body.definition.stored()
    rule = await check_definition(conn, definition, None)
    segment_id = await repository.insert_segment(
        conn,
        {
            "name": body.name,
            "description": body.description,
            "kind": body.kind,
            "definition": definition,
        },
    )
    if segment_id is None:
        raise ProblemException(409, f"a segment named {body.name!r} already exists")
    # New KPIs are stale until the metrics-worker computes them.
    await mark_segments_stale(conn, [segment_id])
    if rule is not None:
        await queue.request_refresh(conn, segment_id, "created")
    segment = await get_segment(conn, segment_id)
    await add_event(
        conn,
        SegmentCreated(
            source=SOURCE,
            subject=str(segment_id),
            data=SegmentRef(segment_id=segment_id, name=segment.name, version=segment.version),
        ),
    )
    return segment


async def list_segments(
    conn: AsyncConnection,
    *,
    kind: str | None,
    status: str | None,
    active: bool | None,
    q: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[Segment], str | None]:
    after = decode_created_cursor(cursor) if cursor else None
    rows = await repository.list_views(
        conn, kind=kind, status=status, active=active, q=q, after=after, limit=limit
    )
    items = [segment_of(dict(row._mapping)) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor(last.created_at.isoformat(), str(last.id))
    return items, next_cursor


async def _locked_segment(conn: AsyncConnection, segment_id: uuid.UUID) -> Any:
    row = await repository.lock(conn, segment_id)
    if row is None:
        raise not_found("segment", segment_id)
    return row


async def record_membership_change(
    conn: AsyncConnection, segment_id: uuid.UUID, *, entered: int, exited: int, cause: str
) -> None:
    """Count, history, staleness and the event of a membership change, in its transaction."""
    if not entered and not exited:
        return
    row = await repository.record_membership_change(
        conn,
        segment_id,
        entered=entered,
        exited=exited,
        cause=cause,
        correlation_id=current_correlation_id(),
    )
    await mark_segments_stale(conn, [segment_id])
    # Rules referring to this segment follow (debounced, by the refresher).
    await queue.note_segment_changed(conn, segment_id)
    await add_event(
        conn,
        SegmentMembersChanged(
            source=SOURCE,
            subject=str(segment_id),
            data=MembersChanged(
                segment_id=segment_id,
                added=entered,
                removed=exited,
                membership_version=row.membership_version,
                cause=cause,
            ),
        ),
    )


async def add_members(
    conn: AsyncConnection, segment_id: uuid.UUID, body: MembersRequest
) -> MembersAdded:
    segment = await _locked_segment(conn, segment_id)
    result = await repository.change_members(
        conn,
        segment.id,
        add=True,
        external_ids=body.external_ids,
        emails=body.emails,
        rule=is_rule(segment.definition),
    )
    await record_membership_change(
        conn, segment.id, entered=result.changed, exited=0, cause="members_added"
    )
    return MembersAdded(
        added=result.changed,
        already_members=result.found - result.changed,
        not_found=list(result.not_found),
    )


async def remove_members(
    conn: AsyncConnection, segment_id: uuid.UUID, body: MembersRequest
) -> MembersRemoved:
    segment = await _locked_segment(conn, segment_id)
    result = await repository.change_members(
        conn,
        segment.id,
        add=False,
        external_ids=body.external_ids,
        emails=body.emails,
        rule=is_rule(segment.definition),
    )
    await record_membership_change(
        conn, segment.id, entered=0, exited=result.changed, cause="members_removed"
    )
    return MembersRemoved(
        removed=result.changed,
        not_members=result.found - result.changed,
        not_found=list(result.not_found),
    )


async def list_members(
    conn: AsyncConnection, segment_id: uuid.UUID, cursor: str | None, limit: int
) -> tuple[list[Member], str | None]:
    after = None
    if cursor:
        after = decode_key_cursor(cursor)
    if not await repository.exists(conn, segment_id):
        raise not_found("segment", segment_id)
    rows = await repository.list_members(conn, segment_id, after, limit)
    items = [Member.model_validate(row, from_attributes=True) for row in rows[:limit]]
    next_cursor = encode_cursor(rows[limit - 1].customer_id) if len(rows) > limit else None
    return items, next_cursor


async def get_metrics(conn: AsyncConnection, segment_id: uuid.UUID) -> SegmentMetrics:
    row = await repository.get_view(conn, segment_id)
    if row is None:
        raise not_found("segment", segment_id)
    return metrics_of(row)


MAX_NAME = 200


def check_if_match(if_match: str | None, version: int) -> None:
    """412 unless `If-Match` is absent, `*`, or lists the current strong ETag."""
    if if_match is None:
        return
    tags = [tag.strip() for tag in if_match.split(",")]
    if "*" in tags or f'"{version}"' in tags:
        return
    raise ProblemException(
        412,
        f'If-Match does not match the current version (ETag "{version}")',
        headers={"ETag": f'"{version}"'},
    )


async def _segment_changed(
    conn: AsyncConnection, row: Mapping[str, Any], event_type: type[SegmentEvent]
) -> Segment:
    await add_event(
        conn,
        event_type(
            source=SOURCE,
            subject=str(row["id"]),
            data=SegmentRef(segment_id=row["id"], name=row["name"], version=row["version"]),
        ),
    )
    return await get_segment(conn, row["id"])


async def update_segment(
    conn: AsyncConnection,
    segment_id: uuid.UUID,
    body: SegmentUpdate,
    key: ApiKeyInfo,
    if_match: str | None,
) -> Segment:
    segment = await _locked_segment(conn, segment_id)
    check_if_match(if_match, segment.version)
    given = body.model_dump(exclude_unset=True)
    for name in ("name", "definition", "kind"):
        if name in given and given[name] is None:
            raise field_error(f"/{name}", "must not be null")
    if body.kind == "custom" and not key.allows("admin"):
        raise ProblemException(403, "making a segment custom needs the admin scope")
    if segment.kind == "default" and ("definition" in given or "kind" in given):
        raise ProblemException(409, "the definition and kind of a default segment are fixed")
    definition = body.definition.stored() if body.definition else None
    unchanged = (
        given.get("name", segment.name) == segment.name
        and given.get("description", segment.description) == segment.description
        and given.get("kind", segment.kind) == segment.kind
        and (definition is None or definition == segment.definition)
    )
    if unchanged:
        # Nothing changes: no new version, so that a client's If-Match still holds.
        return await get_segment(conn, segment_id)
    rule = None
    if definition is not None:
        rule = await check_definition(conn, definition, segment_id)
    try:
        row = await repository.update_segment(
            conn,
            segment_id,
            name=given.get("name"),
            description=(given["description"],) if "description" in given else None,
            definition=definition,
            kind=given.get("kind"),
        )
    except repository.NameTaken as exc:
        raise ProblemException(409, f"a segment named {body.name!r} already exists") from exc
    if definition is not None and definition != segment.definition:
        if rule is not None:
            await queue.request_refresh(conn, segment_id, "rule_changed")
        elif is_rule(segment.definition):
            # Manual now: the members stay as they are, the rule's overrides go.
            await repository.drop_overrides(conn, segment_id)
            await queue.drop(conn, segment_id)
    return await _segment_changed(conn, row, SegmentUpdated)


async def delete_segment(
    conn: AsyncConnection, segment_id: uuid.UUID, if_match: str | None
) -> None:
    segment = await _locked_segment(conn, segment_id)
    check_if_match(if_match, segment.version)
    if segment.kind == "default":
        raise ProblemException(409, "default segments cannot be deleted; deactivate them")
    await rules_repository.lock_rule_graph(conn)
    referring = await rules_repository.referring_segments(conn, segment_id)
    if referring:
        names = ", ".join(repr(row["name"]) for row in referring[:5])
        raise ProblemException(
            409,
            f"the rules of {names} refer to this segment; change them before deleting it",
        )
    await repository.delete_segment(conn, segment_id)
    await add_event(
        conn,
        SegmentDeleted(
            source=SOURCE,
            subject=str(segment_id),
            data=SegmentRef(segment_id=segment_id, name=segment.name, version=segment.version),
        ),
    )


async def set_active(
    conn: AsyncConnection, segment_id: uuid.UUID, active: bool, if_match: str | None
) -> Segment:
    """Activate or deactivate; doing it twice changes nothing the second time."""
    segment = await _locked_segment(conn, segment_id)
    check_if_match(if_match, segment.version)
    if segment.active == active:
        return await get_segment(conn, segment_id)
    row = await repository.update_segment(conn, segment_id, active=active)
    if active:
        # It was not refreshed while inactive.
        await queue.request_refresh(conn, segment_id, "activated")
    else:
        await queue.drop(conn, segment_id)
    return await _segment_changed(conn, row, SegmentActivated if active else SegmentDeactivated)


async def request_refresh(conn: AsyncConnection, segment_id: uuid.UUID) -> Segment:
    """Queue a recomputation of a rule segment's membership, due now."""
    segment = await _locked_segment(conn, segment_id)
    if not is_rule(segment.definition):
        raise ProblemException(409, "only rule segments are refreshed; this one is manual")
    if not segment.active:
        raise ProblemException(409, "inactive segments are not refreshed; activate it first")
    await queue.request_refresh(conn, segment_id, "refresh_requested")
    return await get_segment(conn, segment_id)


def copy_names(name: str, taken: set[str]) -> list[str]:
    """'<name> (copy)', '<name> (copy 2)', ... not yet taken, shortening the base to fit."""
    names = []
    for number in range(1, 10_000):
        suffix = " (copy)" if number == 1 else f" (copy {number})"
        candidate = name[: MAX_NAME - len(suffix)] + suffix
        if candidate.lower() not in taken:
            names.append(candidate)
            if len(names) == 5:  # spares, should another request take one meanwhile
                break
    return names


async def duplicate_segment(
    conn: AsyncConnection, segment_id: uuid.UUID, body: DuplicateRequest
) -> Segment:
    source = await _locked_segment(conn, segment_id)
    if body.name is not None:
        names = [body.name]
    else:
        names = copy_names(source.name, await repository.taken_names(conn, source.name[:150]))
    copy_id = await repository.insert_copy(conn, source._mapping, names)
    if copy_id is None:
        raise ProblemException(409, f"a segment named {names[0]!r} already exists")
    copied = await repository.copy_members(conn, segment_id, copy_id)
    await mark_segments_stale(conn, [copy_id])
    created = await get_segment(conn, copy_id)
    await add_event(
        conn,
        SegmentCreated(
            source=SOURCE,
            subject=str(copy_id),
            data=SegmentRef(segment_id=copy_id, name=created.name, version=created.version),
        ),
    )
    await record_membership_change(conn, copy_id, entered=copied, exited=0, cause="duplicated")
    return await get_segment(conn, copy_id)


async def list_history(
    conn: AsyncConnection, segment_id: uuid.UUID, cursor: str | None, limit: int
) -> tuple[list[HistoryEntry], str | None]:
    before = 2**62
    if cursor:
        before = decode_key_cursor(cursor)
    if not await repository.exists(conn, segment_id):
        raise not_found("segment", segment_id)
    rows = await repository.history(conn, segment_id, before, limit + 1)
    items = [HistoryEntry.model_validate(dict(row)) for row in rows[:limit]]
    next_cursor = encode_cursor(rows[limit - 1]["id"]) if len(rows) > limit else None
    return items, next_cursor

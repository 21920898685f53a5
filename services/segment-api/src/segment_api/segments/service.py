import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.events import SOURCE
from segment_api.listing import PageRequest
from segment_api.pagination import Page
from segment_api.problems import ProblemException, field_error, not_found
from segment_api.rules import repository as rules_repository
from segment_api.rules import requests as refreshes
from segment_api.rules.definition import is_rule
from segment_api.rules.service import check_definition
from segment_api.segments import locks, members, repository
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
from segment_api.subscriptions import resume as subscriptions
from segment_api.versions import check_if_match
from segments_shared.apikeys import ApiKeyInfo
from segments_shared.changes import Everyone, changes_of
from segments_shared.events import (
    SegmentActivated,
    SegmentCreated,
    SegmentDeactivated,
    SegmentDeleted,
    SegmentRef,
    SegmentUpdated,
)
from segments_shared.kpis import kpis_of

SegmentEvent = (
    SegmentCreated | SegmentUpdated | SegmentActivated | SegmentDeactivated | SegmentDeleted
)


def segment_event(
    event_type: type[SegmentEvent], segment_id: uuid.UUID, name: str, version: int
) -> SegmentEvent:
    return event_type(
        source=SOURCE,
        subject=str(segment_id),
        data=SegmentRef(segment_id=segment_id, name=name, version=version),
    )


def metrics_of(row: Mapping[str, Any]) -> SegmentMetrics:
    """The figures as `metrics.updated` carries them (segments_shared/kpis.py), and whether
    a change waits for them."""
    if row["computed_at"] is None:
        return SegmentMetrics(stale=True)
    return SegmentMetrics(**kpis_of(row).model_dump(), stale=bool(row["stale"]))


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
    changes = changes_of(conn)
    # New KPIs are stale until the metrics-worker computes them.
    changes.segment_created(segment_id)
    if rule is not None:
        await refreshes.request_refresh(conn, segment_id, "created")
    segment = await get_segment(conn, segment_id)
    changes.publish(segment_event(SegmentCreated, segment_id, segment.name, segment.version))
    return segment


async def list_segments(
    conn: AsyncConnection,
    *,
    kind: str | None,
    status: str | None,
    active: bool | None,
    q: str | None,
    page: PageRequest,
) -> Page[Segment]:
    rows = await repository.list_views(
        conn,
        kind=kind,
        status=status,
        active=active,
        q=q,
        after=page.after_created(),
        limit=page.limit,
    )
    return Page(
        items=[segment_of(dict(row._mapping)) for row in rows[: page.limit]],
        next_cursor=page.next_cursor(rows, lambda row: (row.created_at.isoformat(), str(row.id))),
    )


async def locked_segment(conn: AsyncConnection, segment_id: uuid.UUID) -> Any:
    """The segment's row, locked (segments/locks.py); 404 if there is none."""
    row = await locks.lock_segment(conn, segment_id)
    if row is None:
        raise not_found("segment", segment_id)
    return row


async def _change_members(
    conn: AsyncConnection, segment_id: uuid.UUID, body: MembersRequest, *, add: bool
) -> tuple[int, int, list[str]]:
    """Add or remove the named customers (a rule segment's includes or excludes), recorded
    as a membership change: how many changed, how many were already as asked, and the
    names no customer has."""
    segment = await locked_segment(conn, segment_id)
    result = await members.change_members(
        conn,
        segment.id,
        add=add,
        external_ids=body.external_ids,
        emails=body.emails,
        rule=is_rule(segment.definition),
    )
    moved = list(result.changed_ids)
    await changes_of(conn).members_changed(
        segment.id,
        entered=moved if add else 0,
        exited=0 if add else moved,
        cause="members_added" if add else "members_removed",
    )
    return result.changed, result.found - result.changed, list(result.not_found)


async def add_members(
    conn: AsyncConnection, segment_id: uuid.UUID, body: MembersRequest
) -> MembersAdded:
    added, already, unknown = await _change_members(conn, segment_id, body, add=True)
    return MembersAdded(added=added, already_members=already, not_found=unknown)


async def remove_members(
    conn: AsyncConnection, segment_id: uuid.UUID, body: MembersRequest
) -> MembersRemoved:
    removed, not_members, unknown = await _change_members(conn, segment_id, body, add=False)
    return MembersRemoved(removed=removed, not_members=not_members, not_found=unknown)


async def require_segment(conn: AsyncConnection, segment_id: uuid.UUID) -> None:
    """404 unless the segment exists."""
    if not await repository.exists(conn, segment_id):
        raise not_found("segment", segment_id)


async def list_members(
    conn: AsyncConnection, segment_id: uuid.UUID, page: PageRequest
) -> Page[Member]:
    await require_segment(conn, segment_id)
    rows = await members.list_members(conn, segment_id, page.after_key(), page.limit)
    return Page(
        items=[Member.model_validate(row, from_attributes=True) for row in rows[: page.limit]],
        next_cursor=page.next_cursor(rows, lambda row: (row.customer_id,)),
    )


async def get_metrics(conn: AsyncConnection, segment_id: uuid.UUID) -> SegmentMetrics:
    row = await repository.get_view(conn, segment_id)
    if row is None:
        raise not_found("segment", segment_id)
    return metrics_of(row)


MAX_NAME = 200


async def _segment_changed(
    conn: AsyncConnection, row: Mapping[str, Any], event_type: type[SegmentEvent]
) -> Segment:
    changes_of(conn).publish(segment_event(event_type, row["id"], row["name"], row["version"]))
    return await get_segment(conn, row["id"])


async def update_segment(
    conn: AsyncConnection,
    segment_id: uuid.UUID,
    body: SegmentUpdate,
    key: ApiKeyInfo,
    if_match: str | None,
) -> Segment:
    segment = await locked_segment(conn, segment_id)
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
            await refreshes.request_refresh(conn, segment_id, "rule_changed")
        elif is_rule(segment.definition):
            # Manual now: the members stay as they are, the rule's overrides go.
            await repository.drop_overrides(conn, segment_id)
            await refreshes.drop(conn, segment_id)
    return await _segment_changed(conn, row, SegmentUpdated)


async def delete_segment(
    conn: AsyncConnection, segment_id: uuid.UUID, if_match: str | None
) -> None:
    segment = await locked_segment(conn, segment_id)
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
    changes_of(conn).publish(
        segment_event(SegmentDeleted, segment_id, segment.name, segment.version)
    )


async def set_active(
    conn: AsyncConnection, segment_id: uuid.UUID, active: bool, if_match: str | None
) -> Segment:
    """Activate or deactivate; doing it twice changes nothing the second time."""
    segment = await locked_segment(conn, segment_id)
    check_if_match(if_match, segment.version)
    if segment.active == active:
        return await get_segment(conn, segment_id)
    row = await repository.update_segment(conn, segment_id, active=active)
    if active:
        # It was not refreshed while inactive.
        await refreshes.request_refresh(conn, segment_id, "activated")
        await subscriptions.segment_activated(conn, segment_id)
    else:
        await refreshes.drop(conn, segment_id)
    return await _segment_changed(conn, row, SegmentActivated if active else SegmentDeactivated)


async def request_refresh(conn: AsyncConnection, segment_id: uuid.UUID) -> Segment:
    """Queue a recomputation of a rule segment's membership, due now."""
    segment = await locked_segment(conn, segment_id)
    if not is_rule(segment.definition):
        raise ProblemException(409, "only rule segments are refreshed; this one is manual")
    if not segment.active:
        raise ProblemException(409, "inactive segments are not refreshed; activate it first")
    await refreshes.request_refresh(conn, segment_id, "refresh_requested")
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
    source = await locked_segment(conn, segment_id)
    if body.name is not None:
        names = [body.name]
    else:
        names = copy_names(source.name, await repository.taken_names(conn, source.name[:150]))
    copy_id = await repository.insert_copy(conn, source._mapping, names)
    if copy_id is None:
        raise ProblemException(409, f"a segment named {names[0]!r} already exists")
    copied = await members.copy_members(conn, segment_id, copy_id)
    return await announce_created(conn, copy_id, copied, "duplicated")


async def announce_created(
    conn: AsyncConnection, segment_id: uuid.UUID, members: int, cause: str
) -> Segment:
    """A new segment made with its first members (a copy, a target-group operation): its
    event, its membership change, its KPIs computed whole."""
    changes = changes_of(conn)
    changes.segment_created(segment_id)
    created = await get_segment(conn, segment_id)
    changes.publish(segment_event(SegmentCreated, segment_id, created.name, created.version))
    await changes.members_changed(segment_id, entered=Everyone(members), exited=0, cause=cause)
    return await get_segment(conn, segment_id)


async def list_history(
    conn: AsyncConnection, segment_id: uuid.UUID, page: PageRequest
) -> Page[HistoryEntry]:
    before = page.after_key()
    await require_segment(conn, segment_id)
    rows = await repository.history(
        conn, segment_id, 2**62 if before is None else before, page.limit + 1
    )
    return Page(
        items=[HistoryEntry.model_validate(dict(row)) for row in rows[: page.limit]],
        next_cursor=page.next_cursor(rows, lambda row: (row["id"],)),
    )

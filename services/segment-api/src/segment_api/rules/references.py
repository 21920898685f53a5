"""Rules that refer to other segments: the referred segments must exist, and no chain of
references may lead back to the segment being saved (a cycle is a 422: docs/rules.md#validation)."""

import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.rules import repository
from segment_api.rules.nodes import Node, referenced_segments
from segment_api.rules.parse import RuleInvalid


def stored_references(definition: Mapping[str, Any]) -> Iterator[uuid.UUID]:
    """The segment ids a saved (hence valid) definition refers to."""
    stack: list[object] = [definition.get("rule")]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if isinstance(item.get("segment"), str):
                yield uuid.UUID(item["segment"])
            stack.extend(value for key, value in item.items() if key in ("all", "any", "not"))


def _path_back(
    graph: Mapping[uuid.UUID, list[uuid.UUID]], start: uuid.UUID, target: uuid.UUID
) -> list[uuid.UUID] | None:
    """The segments from `start` to `target` along references, or None (depth-first)."""
    seen: set[uuid.UUID] = set()
    stack: list[tuple[uuid.UUID, list[uuid.UUID]]] = [(start, [start])]
    while stack:
        node, path = stack.pop()
        if node == target:
            return path
        if node in seen:
            continue
        seen.add(node)
        stack.extend((following, [*path, following]) for following in graph.get(node, ()))
    return None


async def check_references(
    conn: AsyncConnection, rule: Node, segment_id: uuid.UUID | None, *, saving: bool
) -> None:
    """Raise RuleInvalid naming each reference to a missing segment, to the segment itself,
    or to a segment whose references lead back to it. `saving` holds the rule-graph lock
    until the transaction ends, so concurrent edits cannot close a cycle."""
    references = referenced_segments(rule)
    if not references:
        return
    if saving:
        await repository.lock_rule_graph(conn)
    names = await repository.segment_names(conn, sorted({ref.segment_id for ref in references}))
    graph: dict[uuid.UUID, list[uuid.UUID]] = {}
    if segment_id is not None:
        for row in await repository.rule_graph(conn):
            graph[row["id"]] = list(stored_references(row["definition"]))
            names[row["id"]] = row["name"]
    errors = []
    for ref in references:
        pointer = f"{ref.pointer}/segment"
        if ref.segment_id not in names:
            errors.append({"pointer": pointer, "detail": "no segment has this id"})
        elif ref.segment_id == segment_id:
            errors.append({"pointer": pointer, "detail": "a segment cannot refer to itself"})
        elif segment_id is not None:
            path = _path_back(graph, ref.segment_id, segment_id)
            if path is not None:
                chain = " -> ".join(repr(names.get(step, str(step))) for step in path[:-1])
                errors.append(
                    {
                        "pointer": pointer,
                        "detail": f"makes a cycle: {chain} refers back to this segment",
                    }
                )
    if errors:
        raise RuleInvalid(errors)

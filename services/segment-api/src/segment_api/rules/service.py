"""Rules when segments are saved, and previews."""

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.problems import ProblemException
from segment_api.rules import repository
from segment_api.rules.definition import RuleDefinition, check_manual, is_rule, parse_definition
from segment_api.rules.nodes import leaves
from segment_api.rules.parse import RuleInvalid, parse_rule
from segment_api.rules.references import check_references
from segment_api.rules.schemas import ConditionCount, Preview, PreviewRequest, SampleMember

SAMPLE_SIZE = 20


def invalid(exc: RuleInvalid) -> ProblemException:
    return ProblemException(422, str(exc), errors=exc.errors)


async def check_definition(
    conn: AsyncConnection, definition: Mapping[str, Any], segment_id: uuid.UUID | None
) -> RuleDefinition | None:
    """Validate a definition about to be saved (422 naming every offending node); the rule
    when it is one. `segment_id` is the segment being edited (None when creating)."""
    try:
        if not is_rule(definition):
            check_manual(definition)
            return None
        parsed = parse_definition(definition)
        await check_references(conn, parsed.rule, segment_id, saving=True)
    except RuleInvalid as exc:
        raise invalid(exc) from exc
    return parsed


async def preview(conn: AsyncConnection, body: PreviewRequest) -> Preview:
    """Size, per-condition counts and a sample, computed in the database; nothing saved."""
    try:
        rule = parse_rule(body.rule, "/rule")
        await check_references(conn, rule, None, saving=False)
    except RuleInvalid as exc:
        raise invalid(exc) from exc
    await repository.tune(conn)
    counted = await repository.counts(conn, rule)
    strategy = await repository.strategy_for(conn, rule)
    sample = await repository.sample(conn, rule, strategy, SAMPLE_SIZE)
    return Preview(
        size=counted[0],
        conditions=[
            ConditionCount(pointer=leaf.pointer, count=counted[index + 1])
            for index, leaf in enumerate(leaves(rule))
        ],
        sample=[SampleMember.model_validate(row, from_attributes=True) for row in sample],
    )

"""Optimistic concurrency: a segment's or a destination's `version` is its strong ETag, and
a `PATCH` or `DELETE` with an `If-Match` that does not list it gets 412
(docs/contract.md#http-conventions)."""

from segment_api.problems import ProblemException


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

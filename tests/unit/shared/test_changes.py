"""What a membership change records for the KPI fold and the rule refresher: who entered and
left by name where known, the segment whole otherwise."""

import uuid

from segments_shared.changes import MAX_NAMED, MembershipChange

SEGMENT = uuid.UUID("01a25227-0000-7000-8000-000000000001")


def test_ids_on_both_sides_are_named() -> None:
    change = MembershipChange.of(SEGMENT, [3, 1], [2])
    assert change.named
    assert change.customers == [1, 2, 3]


def test_a_zero_count_names_nobody_and_keeps_the_other_side_named() -> None:
    # An edit that only adds (or an erasure that only removes) is still named: folded as a
    # delta of those customers, not the segment recomputed whole.
    assert MembershipChange.of(SEGMENT, [5, 6], 0).customers == [5, 6]
    assert MembershipChange.of(SEGMENT, 0, [7]).customers == [7]


def test_counts_without_ids_are_not_named() -> None:
    assert not MembershipChange.of(SEGMENT, 10, 0).named
    assert MembershipChange.of(SEGMENT, 0, 4).customers is None


def test_too_many_to_name_is_computed_whole() -> None:
    many = list(range(MAX_NAMED))
    assert MembershipChange.of(SEGMENT, many, []).named
    assert not MembershipChange.of(SEGMENT, many, [MAX_NAMED]).named


def test_counts() -> None:
    assert MembershipChange.counts([1, 2], 0) == (2, 0)
    assert MembershipChange.counts(7, [1]) == (7, 1)

"""Ids are time-ordered (UUID version 7), so a new segment's members append at the right edge
of the members' primary key."""

import time
import uuid

from segments_shared.db.ids import uuid7


def test_uuid7_has_its_version_variant_and_time() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after


def test_uuid7_grows_with_time_and_does_not_repeat() -> None:
    earlier = [uuid7() for _ in range(1000)]
    time.sleep(0.002)
    later = uuid7()
    assert all(later > value for value in earlier)
    assert len(set(earlier)) == len(earlier)

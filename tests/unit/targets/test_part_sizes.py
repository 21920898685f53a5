"""A split's part sizes: largest remainders, ties to the earlier part, adding up to the
members (tests/rules/test_targets.py checks the bound over random weights)."""

import pytest

from segment_api.targets.service import part_sizes


@pytest.mark.parametrize(
    ("members", "weights", "sizes"),
    [
        (10, [1, 1, 1], [4, 3, 3]),  # the leftover member goes to the first part
        (100, [1 / 3, 1 / 3, 1 / 3], [34, 33, 33]),
        (10, [2, 1], [7, 3]),
        (10, [0.1, 0.2, 0.7], [1, 2, 7]),
        (3, [0.3, 0.3, 0.4], [1, 1, 1]),  # remainders 0.9, 0.9, 0.2
        (7, [1, 0, 1], [4, 0, 3]),  # a part of weight 0 gets nobody
        (5, [1] * 7, [1, 1, 1, 1, 1, 0, 0]),  # more parts than members
        (0, [1, 2], [0, 0]),
    ],
)
def test_sizes_follow_the_weights(members: int, weights: list[float], sizes: list[int]) -> None:
    assert part_sizes(members, weights) == sizes

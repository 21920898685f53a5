"""segment-api's stop signals: one arriving with the first is the same request; a later one
forces the exit."""

from segment_api.main import StopRequests


def test_a_signal_with_the_first_is_the_same_request_and_a_later_one_forces() -> None:
    stops = StopRequests()
    assert stops.force(100.0) is False
    assert stops.force(100.2) is False  # the terminal's SIGINT, then make run's SIGTERM
    assert stops.force(100.0 + StopRequests.AGAIN_AFTER) is True

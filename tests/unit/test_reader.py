"""Where the topic reader starts a partition (pure)."""
from services.common.reader import start_offset


def test_start_offset():
    assert start_offset(0, 10) == 0
    assert start_offset(4, 10) == 4  # retention moved the beginning
    assert start_offset(0, 10, last=3) == 7
    assert start_offset(8, 10, last=5) == 8  # never before the beginning
    assert start_offset(0, 0, last=5) == 0  # empty partition
    assert start_offset(0, 10, last=3, position=2) == 2  # a kept position wins
    assert start_offset(5, 10, position=2) == 5  # ... unless retention removed it

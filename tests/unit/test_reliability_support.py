"""The reliability suite's drain check: only a /metrics page that shows an empty spool and queue is drained."""
from tests.reliability.support import capture_drained_in

PAGE = """# HELP graduate_router_capture_queue_depth Captured records queued or unacknowledged by Kafka
# TYPE graduate_router_capture_queue_depth gauge
graduate_router_capture_queue_depth {depth}
# HELP graduate_router_spool_records Records waiting in the capture spool
# TYPE graduate_router_spool_records gauge
graduate_router_spool_records {spooled}
graduate_router_spool_bytes 0.0
"""


def test_an_empty_spool_and_queue_is_drained():
    assert capture_drained_in(PAGE.format(depth="0.0", spooled="0.0"))


def test_records_in_flight_or_spooled_are_not_drained():
    assert not capture_drained_in(PAGE.format(depth="20.0", spooled="0.0"))
    assert not capture_drained_in(PAGE.format(depth="0.0", spooled="15.0"))


def test_a_page_without_the_gauges_is_not_drained():
    # the API port's answer to /metrics (it has none): read as 0, it once let the broker-kill test
    # read the topics while 20 records waited in the producer and 15 in the spool
    assert not capture_drained_in('{"detail":"Not Found"}')
    assert not capture_drained_in("")
    assert not capture_drained_in("graduate_router_spool_records 0.0\n")  # the queue gauge missing

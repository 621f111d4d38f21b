"""`graduate up`'s pure parts: one status line per task, whose Kafka and Triton these are."""
from services.up import external, status_line


def test_a_status_line_says_mode_model_graduation_reviews_and_why():
    line = status_line("intent", {"decision": {"mode": "shadow", "model_version": "3"}, "graduation": "shadow",
                                  "reason": "offline gate passed", "reviews_needed": 0})
    assert line == "intent: shadow (3) · offline gate passed"
    waiting = status_line("hwu64", {"decision": None, "graduation": "collecting_reviews", "reviews_needed": 120,
                                    "reason": "recommended by the profiler"})
    assert waiting.startswith("hwu64: frontier · collecting_reviews, 120 more reviews needed ·")


def test_our_own_ports_are_not_an_external_kafka():
    assert external({"GRADUATE_KAFKA_PORT": "9492", "GRADUATE_KAFKA_BOOTSTRAP": "127.0.0.1:9492"}) == (False, False)
    assert external({"GRADUATE_KAFKA_BOOTSTRAP": "kafka:9092", "GRADUATE_TRITON_URL": "http://t:8000"}) == (True, True)

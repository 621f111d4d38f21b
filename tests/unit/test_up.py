"""`graduate up`'s pure parts: one status line per task, whose Kafka and Triton these are."""
from services.up import external, listening, status_line


def test_a_status_line_says_mode_model_graduation_reviews_and_why():
    line = status_line("intent", {"decision": {"mode": "shadow", "model_version": "3"}, "graduation": "shadow",
                                  "reason": "offline gate passed", "reviews_needed": 0})
    assert line == "intent: shadow (3) · offline gate passed"
    waiting = status_line("hwu64", {"decision": None, "graduation": "collecting_reviews", "reviews_needed": 120,
                                    "reason": "recommended by the profiler"})
    assert waiting.startswith("hwu64: frontier · collecting_reviews, 120 more reviews needed ·")


def test_our_own_ports_are_ours_unless_something_already_answers_there():
    ours = {"GRADUATE_KAFKA_PORT": "9492", "GRADUATE_KAFKA_BOOTSTRAP": "127.0.0.1:9492",
            "GRADUATE_TRITON_HTTP_PORT": "8400"}
    assert external(ours, lambda address: False) == (False, False)
    assert external(ours, lambda address: address == "127.0.0.1:8400") == (False, True)  # make up's Triton
    named = {"GRADUATE_KAFKA_BOOTSTRAP": "kafka:9092", "GRADUATE_TRITON_URL": "http://t:8000"}
    assert external(named, lambda address: False) == (True, True)


def test_listening_probes_a_port():
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert listening(f"127.0.0.1:{server.getsockname()[1]}")
    assert not listening("127.0.0.1:1") and not listening("not-an-address")

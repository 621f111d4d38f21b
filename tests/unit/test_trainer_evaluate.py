"""Holdout figures, the registration event, settings, the service's request coalescing."""
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from services.common.codec import Codec
from services.common.contracts import ModelRegistered, RetrainRequest, utcnow
from trainer.evaluate import confusion_matrix, evaluate_holdout, paired_counts
from trainer.finetune import carve_validation, length_bucketed_batches
from trainer.publish import model_registered, registration_key
from trainer.service import requests_to_run
from trainer.settings import TrainerSettings

LABELS = ["a", "b", "c"]
GOLD = ["a", "a", "b", "b", "c", "c"]
FRONTIER = ["a", "b", "b", "b", "c", "a"]
SMALL = ["a", "a", "b", "c", "a", "c"]
REVIEWED = [True, True, False, False, True, False]


def test_holdout_report_by_hand() -> None:
    r = evaluate_holdout(LABELS, GOLD, FRONTIER, REVIEWED, SMALL)
    assert (r["n"], r["gold_reviewed"], r["gold_frontier"]) == (6, 3, 3)
    assert r["small_accuracy"] == pytest.approx(4 / 6)
    assert r["frontier_accuracy"] == pytest.approx(4 / 6)
    assert r["agreement"] == pytest.approx(2 / 6)
    assert r["paired"] == {"both_correct": 2, "small_only": 2, "frontier_only": 2, "neither": 0}
    assert r["per_class"]["a"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8),
                                   "support": 2}
    assert r["per_class"]["b"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert r["per_class"]["c"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert r["macro_f1"] == pytest.approx(np.mean([0.8, 2 / 3, 0.5]))
    assert {"gold": "b", "predicted": "c", "count": 1} in r["confusion_pairs"]
    reviewed = r["reviewed_only"]
    assert (reviewed["n"], reviewed["small_accuracy"], reviewed["frontier_accuracy"]) == (3, pytest.approx(2 / 3),
                                                                                         pytest.approx(2 / 3))


def test_paired_counts_and_confusion_matrix() -> None:
    assert paired_counts(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])).n == 4
    m = confusion_matrix(LABELS, GOLD, SMALL)
    assert m.sum() == 6 and np.trace(m) == 4 and m[2, 0] == 1


def test_model_registered_round_trips_through_avro(codec: Codec) -> None:
    holdout = evaluate_holdout(LABELS, GOLD, FRONTIER, REVIEWED, SMALL)
    threshold = {"threshold": None, "coverage": 0.0, "kept_accuracy": 0.0, "predicted_fallback_rate": 1.0}
    event = model_registered(task="t", version=7, base_model="b", snapshot_id="s", holdout=holdout, threshold=threshold,
                             ece_before=0.2, ece_after=0.05, temperature=1.7, labels=LABELS, metrics={"x": 1},
                             artifact_uri="file:///r/m/7", model_card_uri=None, triton_model="m")
    assert event.version == "7" and event.threshold is None and event.paired.small_only == 2
    assert registration_key(event) == b"t/7"
    assert codec.decode(codec.encode(event), ModelRegistered) == event


def test_settings_read_train_prefix_and_share_common_ones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRADUATE_TRAIN_EPOCHS", "5")
    monkeypatch.setenv("GRADUATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("GRADUATE_EPOCHS", "9")  # not a trainer variable
    s = TrainerSettings()
    assert s.epochs == 5 and s.var_dir == tmp_path and s.datasets_dir == tmp_path / "datasets"
    assert TrainerSettings(epochs=2).epochs == 2
    assert s.model_name_for("task-x") == "task-x"
    assert TrainerSettings(triton_model="m.1").model_name_for("task-x") == "m.1"
    with pytest.raises(ValueError):
        TrainerSettings(triton_model="bad/name")


def test_requests_are_coalesced_per_task_and_stale_ones_dropped() -> None:
    now = utcnow()
    old = RetrainRequest(task="a", reason="drift", requested_by="c", ts=now - timedelta(days=2))
    a1 = RetrainRequest(task="a", reason="r1", requested_by="c", ts=now)
    b1 = RetrainRequest(task="b", reason="r", requested_by="c", ts=now)
    a2 = RetrainRequest(task="a", reason="r2", requested_by="c", ts=now)
    assert requests_to_run([old, a1, b1, a2], now) == [a2, b1]
    assert requests_to_run([old], now) == []


def test_length_buckets_cover_every_row_once_and_are_seeded() -> None:
    lengths = [int(x) for x in np.random.default_rng(0).integers(3, 40, size=1000)]
    batches = length_bucketed_batches(lengths, 32, np.random.default_rng(5))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == length_bucketed_batches(lengths, 32, np.random.default_rng(5))
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 5  # similar lengths share a batch, so little padding


def test_validation_carve_is_seeded_and_disjoint() -> None:
    fit, val = carve_validation(100, 0.1, 3)
    assert len(val) == 10 and not set(fit) & set(val) and sorted(fit + val) == list(range(100))
    assert carve_validation(100, 0.1, 3) == (fit, val)

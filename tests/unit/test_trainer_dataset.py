"""A Banking77 snapshot with the simulated frontier's labels, and the model card's files."""
import csv
from pathlib import Path

import numpy as np

from services.common.settings import REPO_ROOT
from trainer import calibrate, model_card
from trainer.threshold import REQUEST, search_threshold
from trainer.dataset_from_banking77 import build_banking77_snapshot
from trainer.evaluate import confusion_matrix, evaluate_holdout
from trainer.snapshot import load_snapshot

TASK = "banking77-intent"


def test_banking77_snapshot_is_valid_and_honest(tmp_path: Path) -> None:
    path = build_banking77_snapshot(tmp_path, TASK, REPO_ROOT / "data" / "banking77", labels_subset=6,
                                    per_label_train=30, per_label_holdout=30, reviewed_share=0.5)
    snap = load_snapshot(path)
    h = snap.holdout
    assert snap.labels == snap.manifest["labels"] and len(snap.labels) == 6
    assert 150 <= len(snap.train) <= 180 and 150 <= len(h) <= 180
    assert 0.3 < sum(h.reviewed) / len(h) < 0.7
    # unreviewed gold is the frontier's answer; train carries only frontier answers
    assert all(g == f for g, f, r in zip(h.label, h.frontier_label, h.reviewed) if not r)
    assert snap.train.label == snap.train.frontier_label and not any(snap.train.reviewed)
    frontier = snap.manifest["source"]["frontier"]
    assert "simulated" in frontier["kind"] and frontier["configured_accuracy"] == 0.92
    assert 0.8 < frontier["realised_accuracy"] <= 1.0
    again = build_banking77_snapshot(tmp_path / "again", TASK, REPO_ROOT / "data" / "banking77", labels_subset=6,
                                     per_label_train=30, per_label_holdout=30, reviewed_share=0.5)
    assert load_snapshot(again).holdout.frontier_label == h.frontier_label  # deterministic per input


def test_train_rows_a_person_checked_carry_the_true_label(tmp_path: Path) -> None:
    """`reviewed_train` stands in for a person checking disputed train labels (bench_quality)."""
    data = REPO_ROOT / "data" / "banking77"
    plain = load_snapshot(build_banking77_snapshot(tmp_path / "plain", TASK, data, labels_subset=6,
                                                   per_label_train=30, per_label_holdout=10)).train
    with (data / "train.csv").open(newline="") as f:
        truth = {row["text"]: row["category"] for row in csv.DictReader(f)}
    wrong = [i for i, (t, y) in enumerate(zip(plain.input, plain.label)) if truth[t] != y]
    right = [i for i, (t, y) in enumerate(zip(plain.input, plain.label)) if truth[t] == y]
    assert wrong and right  # the simulated frontier errs on some train rows
    checked = {plain.normalised_hash[i] for i in wrong[:3] + right[:2]}
    path = build_banking77_snapshot(tmp_path / "checked", TASK, data, labels_subset=6, per_label_train=30,
                                    per_label_holdout=10, reviewed_train=checked)
    snap = load_snapshot(path)
    train = snap.train
    assert train.input == plain.input and train.frontier_label == plain.frontier_label
    for i, h in enumerate(train.normalised_hash):
        assert train.reviewed[i] == (h in checked)
        assert train.label[i] == (truth[train.input[i]] if h in checked else plain.label[i])
    assert snap.manifest["source"]["reviewed_train"] == {"rows": 5, "label_changed": 3}


def test_model_card_writes_markdown_and_plots(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c"]
    gold = [labels[i] for i in rng.integers(0, 3, 200)]
    predicted = [g if rng.random() < 0.8 else labels[(labels.index(g) + 1) % 3] for g in gold]
    conf = rng.uniform(0.4, 1.0, 200)
    correct = np.array([p == g for p, g in zip(predicted, gold)])
    holdout = evaluate_holdout(labels, gold, gold, [True] * 200, predicted)
    frontier_ok = rng.random(200) < 0.8
    choice = search_threshold(conf, {REQUEST: (correct, frontier_ok)}, 0.01, 0.05)
    report = {"task": "t", "version": 3, "triton_model": "m", "base_model": "b", "snapshot_id": "s", "device": "cpu",
              "timings": {"finetune_s": 1.0}, "frontier_source": "simulated", "holdout": holdout,
              "threshold": choice.as_dict(), "gate": {"basis": "all"}, "temperature": 1.2, "validation_size": 20, "ece_before": 0.1,
              "ece_after": 0.05, "export": {"exporter": "optimum"},
              "parity": {"max_abs_logit_delta": 1e-6, "argmax_agreement": 1.0},
              "quantization": {"summary": "not tried"}, "served_onnx": "fp32"}
    bins = calibrate.reliability_bins(conf, correct)
    card = model_card.write_model_card(tmp_path, report, calibrate.coverage_accuracy_curve(conf, correct), bins, bins,
                                       labels, confusion_matrix(labels, gold, predicted))
    text = card.read_text()
    assert "# Model card: t version 3" in text and "gold = reviewed label for 200" in text
    assert "pass the gate's non-inferiority test (margin 0.01, alpha 0.05) on 200 gold holdout items" in text
    for plot in model_card.PLOTS:
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""Out-of-scope inputs: a none-of-these class when train has enough, never an answer when served."""
import csv
import json

import numpy as np

from trainer.dataset_from_banking77 import OUT_OF_SCOPE_LABEL, build_banking77_snapshot, out_of_scope_intents
from trainer.scope import MIN_OUT_OF_SCOPE_EXAMPLES, class_labels, in_scope_answers, served_share
from trainer.snapshot import load_snapshot


def test_the_class_is_added_only_with_enough_examples():
    few = ["a"] * 50 + ["other"] * (MIN_OUT_OF_SCOPE_EXAMPLES - 1)
    assert class_labels(["a", "b"], "other", few) == ["a", "b"]
    assert class_labels(["a", "b"], "other", few + ["other"]) == ["a", "b", "other"]
    assert class_labels(["a", "b"], None, ["other"] * 100) == ["a", "b"]


def test_mass_on_out_of_scope_lowers_the_confidence_and_is_never_the_answer():
    probs = np.array([[0.10, 0.05, 0.85], [0.70, 0.20, 0.10]])
    best, conf = in_scope_answers(probs, n_in_scope=2)
    assert best.tolist() == [0, 0]
    assert conf.tolist() == [0.10, 0.70]
    assert served_share(conf, np.array([True, False]), threshold=0.5) == 0.0
    assert served_share(conf, np.array([True, True]), threshold=0.05) == 1.0
    assert served_share(conf, np.array([False, False]), threshold=0.5) is None


def _write_intents(folder, labels, per_label):
    folder.mkdir()
    (folder / "categories.json").write_text(json.dumps(labels))
    for name, offset in (("train.csv", 0), ("test.csv", 1000)):
        with (folder / name).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "category"])
            for label in labels:
                for i in range(per_label):
                    w.writerow([f"please help with {label.replace('_', ' ')} number {offset + i}", label])


def test_snapshot_with_out_of_scope_intents(tmp_path):
    labels = [f"intent_{i}" for i in range(10)]
    _write_intents(tmp_path / "data", labels, 12)
    seen, unseen = out_of_scope_intents("t", labels, 0.4)
    assert len(seen) == 2 and len(unseen) == 2 and not set(seen) & set(unseen)
    path = build_banking77_snapshot(tmp_path / "ds", "t", tmp_path / "data", out_of_scope_share=0.4,
                                    frontier_accuracy=1.0, reviewed_share=1.0)
    snap = load_snapshot(path)
    assert snap.out_of_scope_label == OUT_OF_SCOPE_LABEL
    assert set(snap.labels) == set(labels) - set(seen) - set(unseen)
    train_oos = [t for t, y in zip(snap.train.input, snap.train.label) if y == OUT_OF_SCOPE_LABEL]
    assert train_oos and all(any(f"{s.replace('_', ' ')} " in t for s in seen) for t in train_oos)
    assert not any(any(f"{u.replace('_', ' ')} " in t for u in unseen) for t in snap.train.input)
    holdout_oos = [t for t, y in zip(snap.holdout.input, snap.holdout.label) if y == OUT_OF_SCOPE_LABEL]
    assert any(any(f"{u.replace('_', ' ')} " in t for u in unseen) for t in holdout_oos)

"""Scores for inputs of intents the small model never saw, on kept quality-bench runs.

    .venv/bin/python bench/bench_quality.py        # once: trains, keeps its runs in var/bench/quality-runs
    .venv/bin/python bench/bench_ood_scores.py     # [--runs FOLDER] reads them (no training)

For each kept run: the fine-tuned encoder's embeddings and head logits (torch, fp32) of the train,
validation and holdout splits, then, per candidate score, how well it separates in-scope inputs from
never-seen intents (AUROC) and what the gate's own threshold search (trainer.threshold, reviewed
holdout) keeps: coverage and the share of never-seen intents served. The candidates: the served
softmax confidence, cosine to the nearest train example, Mahalanobis distance to the class means,
and a logistic combination of confidence and nearest cosine fitted on validation (with and without
pseudo out-of-scope rows made by leaving each row's own class out). Writes
bench/results/ood_scores.json. docs/DESIGN.md ("Out of scope goes to the fallback") reads it.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bench_quality import KEPT_RUNS, TASKS, data_dir  # noqa: E402


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def embed_run(name: str, run_root: Path) -> dict:
    """Embeddings, logits, labels and groups (in / seen / unseen) of one kept run."""
    import torch
    from transformers import AutoTokenizer

    from trainer import snapshot as snap
    from trainer.dataset_from_banking77 import read_banking77
    from trainer.finetune import carve_validation, embed_texts, load_pooled
    from trainer.kinds.classification import Classification
    from trainer.settings import TrainerSettings

    data = snap.load_snapshot(next((run_root / "datasets").glob("*/*")))
    run = next((run_root / "trainer" / "runs").glob("*/*"))
    settings, kind = TrainerSettings(), Classification()
    train_all, holdout = kind.select(data, settings)
    fit, val = carve_validation(len(train_all), settings.validation_fraction, settings.seed)
    model, tok = load_pooled(run / "hf"), AutoTokenizer.from_pretrained(str(run / "hf"))
    max_length = json.loads((run / "version" / "version.json").read_text())["max_length"]
    out = {"classes": kind.classes, "n_labels": len(kind.labels),
           "T": json.loads((run / "version" / "calibration.json").read_text())["temperature"]}
    intents = data.manifest["source"].get("out_of_scope", {})
    original = {e.text: e.label for e in read_banking77(data_dir(name))[2]}
    for split, rows in (("train", train_all.take(fit)), ("val", train_all.take(val)), ("holdout", holdout)):
        with torch.no_grad():
            emb = embed_texts(model, tok, rows.input, max_length, "cpu")
            out[split] = {"emb": emb, "logits": model.head(torch.as_tensor(emb)).numpy(), "label": np.array(rows.label),
                          "frontier": np.array(rows.frontier_label), "reviewed": np.array(rows.reviewed, bool)}
    out["holdout"]["group"] = np.array([
        "unseen" if original.get(t) in intents.get("unseen_intents", []) else
        "seen" if original.get(t) in intents.get("seen_intents", []) else "in" for t in holdout.input])
    return out


def scores(d: dict) -> dict[str, np.ndarray]:
    """Each candidate score on the holdout (higher = keep), and the small model's answers' rightness."""
    from sklearn.covariance import LedoitWolf
    from sklearn.linear_model import LogisticRegression

    classes, n, T = d["classes"], d["n_labels"], d["T"]
    oos = classes[-1] if len(classes) > n else None
    index = {c: i for i, c in enumerate(classes)}
    keep = d["train"]["label"] != oos
    E, EL = d["train"]["emb"][keep], np.array([index[x] for x in d["train"]["label"][keep]])
    means = np.stack([E[EL == c].mean(0) for c in range(n)])
    precision = LedoitWolf().fit(E - means[EL]).precision_

    def view(split):
        p = softmax(d[split]["logits"] / T)[:, :n]
        return p, d[split]["emb"] @ E.T, np.array([index.get(x, -1) for x in d[split]["label"]])

    vp, vs, vg = view("val")
    v_feat = np.c_[np.log(vp.max(1)), vs.max(1)]
    v_ok = vp.argmax(1) == vg
    hp, hs, hg = view("holdout")
    h_feat = np.c_[np.log(hp.max(1)), hs.max(1)]
    diff = d["holdout"]["emb"][:, None, :] - means[None]
    out = {"confidence": hp.max(1), "nearest_cosine": hs.max(1),
           "mahalanobis": -np.einsum("mch,hk,mck->mc", diff, precision, diff).min(1),
           "logistic_on_validation": LogisticRegression().fit(v_feat, v_ok).predict_proba(h_feat)[:, 1]}
    inside = (vg >= 0) & (vg < n)  # pseudo out-of-scope: each in-scope validation row without its own class
    pp = vp[inside].copy()
    pp[np.arange(inside.sum()), vg[inside]] = 0
    pp /= pp.sum(1, keepdims=True)
    ps = np.where(EL[None, :] == vg[inside][:, None], -1.0, vs[inside]).max(1)
    x = np.r_[v_feat, np.c_[np.log(pp.max(1)), ps]]
    y = np.r_[v_ok, np.zeros(int(inside.sum()), bool)]
    out["logistic_with_pseudo_oos"] = LogisticRegression().fit(x, y).predict_proba(h_feat)[:, 1]
    return out | {"_small_ok": hp.argmax(1) == hg}


def evaluate(d: dict, all_scores: dict) -> dict:
    from sklearn.metrics import roc_auc_score

    from services.controller.gate import REQUEST
    from services.controller.settings import ControllerSettings
    from trainer.threshold import search_threshold

    h = d["holdout"]
    ok, group, rev = all_scores["_small_ok"], h["group"], h["reviewed"]
    frontier_ok = h["frontier"] == h["label"]
    gate = ControllerSettings()
    res = {}
    for name, s in all_scores.items():
        if name.startswith("_"):
            continue
        inside, unseen = group == "in", group == "unseen"
        choice = search_threshold(s[rev], {REQUEST: (ok[rev], frontier_ok[rev])}, gate.margin, gate.alpha)
        kept = s >= choice.threshold if choice.threshold is not None else np.zeros(len(s), bool)
        res[name] = {
            "auroc_in_vs_unseen": float(roc_auc_score(np.r_[np.ones(inside.sum()), np.zeros(unseen.sum())],
                                                      np.r_[s[inside], s[unseen]])),
            "auroc_answer_right": float(roc_auc_score(ok[inside], s[inside])),
            "coverage": choice.coverage, "in_scope_coverage": float(kept[rev & inside].mean()),
            "served_accuracy": float(np.where(kept, ok, frontier_ok)[rev].mean()),
            "frontier_accuracy": float(frontier_ok[rev].mean()),
            "served_share_seen": float(kept[rev & (group == "seen")].mean()),
            "served_share_unseen": float(kept[rev & unseen].mean())}
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=KEPT_RUNS, help="the runs bench_quality.py kept (%(default)s)")
    parser.add_argument("--tasks", default="banking77,hwu64")
    args = parser.parse_args()
    results = {}
    for name in args.tasks.split(","):
        if TASKS[name][1] != "classification":
            continue
        if not (args.runs / name / "trainer").is_dir():
            sys.exit(f"no kept quality run for {name} under {args.runs}: run bench/bench_quality.py first")
        print(f"{name}: embedding train, validation and holdout ...", file=sys.stderr, flush=True)
        d = embed_run(name, args.runs / name)
        results[TASKS[name][0]] = evaluate(d, scores(d))
    out = {"benchmark": "scores for never-seen intents on kept quality-bench runs",
           "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "notes": "torch fp32 of the kept models (the served one may be int8); frontier = the SIMULATOR; "
                    "coverage and served shares on the reviewed holdout at the gate's own threshold search",
           "scores": {f"{task}: {name}": {k: round(v, 3) for k, v in r.items()}
                      for task, by_score in results.items() for name, r in by_score.items()}}
    path = ROOT / "bench" / "results" / "ood_scores.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    for task, r in results.items():
        for name, v in r.items():
            print(f"{task:18s} {name:26s} AUROC {v['auroc_in_vs_unseen']:.3f}  coverage {v['coverage']:.3f}  "
                  f"unseen served {v['served_share_unseen']:.3f}")


if __name__ == "__main__":
    main()

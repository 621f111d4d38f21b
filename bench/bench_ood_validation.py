"""Scores for never-seen intents, measured on the train side only (validation split + the data set's
TRAIN rows of the intents the snapshot left out), so that nothing is chosen on a test split.

    .venv/bin/python bench/bench_recipe.py run --snapshot SNAP --variant frozen_fused --save DIR ...
    .venv/bin/python bench/bench_ood_validation.py [--model banking77=DIR --model hwu64=DIR2]

For a model that bench_recipe.py kept: embeddings and head logits (torch fp32) of the fit split (the
kNN's and class means' reference), the validation split (in-scope rows, and rows the frontier answered
'other': seen out-of-scope intents) and the never-seen intents' rows of the data set's train.csv (the
snapshot drops them from train, so the model never saw them). Per score (higher = keep): AUROC
in-scope vs never-seen, AUROC for "answer agrees with the frontier" on in-scope rows, and at the
thresholds that keep 80 / 90 / 95 % of in-scope validation rows: the never-seen and seen-'other'
shares kept, and the kept rows' agreement with the frontier's label (the ranking the gate needs).
Writes bench/results/ood_validation.json.
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
from bench.bench_quality import TASKS, data_dir  # noqa: E402

COVERAGES = (0.8, 0.9, 0.95)
MODELS = ROOT / "var" / "bench" / "recipe" / "models"


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def embed_model(name: str, model_dir: Path) -> dict:
    import torch
    from transformers import AutoTokenizer

    from bench.bench_recipe import load_train
    from trainer import snapshot as snap
    from trainer.dataset_from_banking77 import read_banking77
    from trainer.finetune import embed_texts, load_pooled

    meta = json.loads((model_dir / "graduate_bench.json").read_text())
    kind, fit, val = load_train(Path(meta["snapshot"]), seed=meta["seed"])
    intents = snap.load_snapshot(Path(meta["snapshot"])).manifest["source"]["out_of_scope"]
    _, train_csv, _ = read_banking77(data_dir(name))
    unseen = [e.text for e in train_csv if e.label in set(intents["unseen_intents"])]
    model, tok = load_pooled(model_dir), AutoTokenizer.from_pretrained(str(model_dir))
    out = {"classes": kind.classes, "n_labels": len(kind.labels)}
    for split, texts, labels in (("fit", fit.input, fit.label), ("val", val.input, val.label),
                                 ("unseen", unseen, ["?"] * len(unseen))):
        with torch.no_grad():
            emb = embed_texts(model, tok, texts, meta["max_length"], "cpu")
            out[split] = {"emb": emb, "logits": model.head(torch.as_tensor(emb)).numpy(), "label": np.array(labels)}
    return out


def quantile_rank(reference: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Share of the reference (in-scope validation) scores below x: any score on one [0, 1] scale."""
    ref = np.sort(reference)
    return np.searchsorted(ref, x, side="right") / len(ref)


def scores(d: dict) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """Per candidate: {"val": .., "unseen": ..}; and whether each validation answer agrees with the frontier."""
    n, classes = d["n_labels"], d["classes"]
    index = {c: i for i, c in enumerate(classes)}
    fit_y = np.array([index[x] for x in d["fit"]["label"]])
    in_fit = fit_y < n
    E, EY = d["fit"]["emb"][in_fit], fit_y[in_fit]
    means = np.stack([E[EY == c].mean(0) for c in range(n)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    out: dict[str, dict[str, np.ndarray]] = {}
    for split in ("val", "unseen"):
        logits = d[split]["logits"]
        p = softmax(logits)[:, :n]
        sims = d[split]["emb"] @ E.T
        top10 = np.sort(sims, axis=1)[:, -10:]
        best = p.argmax(1)
        cand = {"confidence": p.max(1), "max_logit": logits[:, :n].max(1),
                "energy": np.log(np.exp(logits[:, :n] - logits.max(1, keepdims=True)).sum(1)) + logits.max(1),
                "nearest_cosine": sims.max(1), "knn10_cosine": top10.mean(1),
                "class_mean_cosine": (d[split]["emb"] @ means.T)[np.arange(len(best)), best],
                "knn10_same_class": np.array([(EY[np.argsort(-s)[:10]] == b).mean() for s, b in zip(sims, best)])}
        for name, v in cand.items():
            out.setdefault(name, {})[split] = v
    val_y = np.array([index.get(x, -1) for x in d["val"]["label"]])
    agrees = softmax(d["val"]["logits"])[:, :n].argmax(1) == val_y
    inside = (val_y >= 0) & (val_y < n)
    for a, b in (("confidence", "nearest_cosine"), ("confidence", "knn10_cosine"), ("confidence", "max_logit"),
                 ("confidence", "class_mean_cosine")):
        ref_a, ref_b = out[a]["val"][inside], out[b]["val"][inside]
        for split in ("val", "unseen"):
            ra, rb = quantile_rank(ref_a, out[a][split]), quantile_rank(ref_b, out[b][split])
            out.setdefault(f"min_rank({a},{b})", {})[split] = np.minimum(ra, rb)
            out.setdefault(f"product_rank({a},{b})", {})[split] = ra * rb
    return out, agrees


def evaluate(d: dict) -> dict:
    from sklearn.metrics import roc_auc_score

    n, classes = d["n_labels"], d["classes"]
    index = {c: i for i, c in enumerate(classes)}
    val_y = np.array([index.get(x, -1) for x in d["val"]["label"]])
    inside, seen = (val_y >= 0) & (val_y < n), val_y == n
    all_scores, agrees = scores(d)
    res = {"n": {"in_scope_val": int(inside.sum()), "seen_other_val": int(seen.sum()),
                 "never_seen": len(d["unseen"]["label"])}}
    for name, s in all_scores.items():
        v, u = s["val"], s["unseen"]
        row = {"auroc_in_vs_unseen": float(roc_auc_score(np.r_[np.ones(inside.sum()), np.zeros(len(u))],
                                                         np.r_[v[inside], u])),
               "auroc_agrees_with_frontier": float(roc_auc_score(agrees[inside], v[inside]))}
        for c in COVERAGES:
            t = np.quantile(v[inside], 1 - c)
            kept = v >= t
            row[f"at_{c:.2f}"] = {"unseen_kept": float((u >= t).mean()),
                                  "seen_other_kept": float(kept[seen].mean()) if seen.any() else None,
                                  "kept_agreement": float(agrees[inside & kept].mean())}
        res[name] = row
    # Iso-accuracy: where each score keeps in-scope rows at the agreement the confidence has at coverage c
    # (the gate's threshold sits where kept accuracy meets a target): the coverage it costs, the unseen kept.
    grid = np.arange(0.5, 1.0001, 0.005)
    curves = {}
    for name, s in all_scores.items():
        v = s["val"][inside]
        order = np.argsort(-v)
        agree_sorted = agrees[inside][order]
        k = np.maximum(1, np.round(grid * len(v)).astype(int))
        curves[name] = (np.cumsum(agree_sorted)[k - 1] / k, k)
    for c in (0.8, 0.9):
        target = curves["confidence"][0][np.argmin(np.abs(grid - c))]
        for name, s in all_scores.items():
            acc, k = curves[name]
            ok = np.nonzero(acc >= target - 1e-9)[0]
            if not len(ok):
                res[name][f"iso_{c:.2f}"] = {"coverage": 0.0, "unseen_kept": 0.0}
                continue
            t = np.sort(s["val"][inside])[::-1][k[ok[-1]] - 1]
            res[name][f"iso_{c:.2f}"] = {"coverage": float(grid[ok[-1]]), "unseen_kept": float((s["unseen"] >= t).mean()),
                                         "kept_agreement": float(target)}
    return res


def flat(row: dict) -> dict:
    """One table row: nested figures as "at_0.90 unseen_kept" columns, rounded."""
    out = {}
    for k, v in row.items():
        for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)]):
            out[f"{k} {kk}" if kk else k] = None if vv is None else round(float(vv), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="TASK=DIR (a bench_recipe.py --save folder); default: "
                        f"banking77 and hwu64 from {MODELS}/<task>-frozen_fused")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ood_validation.json")
    args = parser.parse_args()
    specs = args.model or [f"{t}={MODELS / f'{t}-frozen_fused'}" for t in ("banking77", "hwu64")]
    missing = [x for x in specs if not Path(x.split("=", 1)[1], "graduate_bench.json").exists()]
    if missing:
        sys.exit(f"no kept model at {', '.join(missing)}: make one with bench/bench_recipe.py run --snapshot SNAP "
                 "--variant frozen_fused --budget 0 --epochs 2 --save DIR (see this file's docstring)")
    results = {}
    for spec in specs:
        name, folder = spec.split("=", 1)
        print(f"{name}: embedding fit, validation and never-seen train rows ...", file=sys.stderr, flush=True)
        results[TASKS[name][0]] = evaluate(embed_model(name, Path(folder)))
    args.out.write_text(json.dumps({
        "benchmark": "scores for never-seen intents on the train side (validation + never-seen intents' train rows)",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "notes": "torch fp32 of a bench_recipe.py model (the recipe's defaults, 2 epochs); agreement is with the "
                 "frontier SIMULATOR's labels (92 %), the only labels validation has; thresholds at in-scope "
                 "validation coverage; no test split read",
        "sizes": {task: r["n"] for task, r in results.items()},
        "scores": {f"{task}: {name}": flat(v) for task, r in results.items() for name, v in r.items() if name != "n"}},
        indent=1) + "\n")
    for task, r in results.items():
        for name, v in r.items():
            if name == "n":
                continue
            print(f"{task:16s} {name:48s} AUROC unseen {v['auroc_in_vs_unseen']:.3f} agree {v['auroc_agrees_with_frontier']:.3f} "
                  + " ".join(f"@{c}: unseen {v[f'at_{c:.2f}']['unseen_kept']:.3f} acc {v[f'at_{c:.2f}']['kept_agreement']:.3f}"
                             for c in COVERAGES)
                  + " " + " ".join(f"iso{c}: cov {v[f'iso_{c:.2f}']['coverage']:.3f} unseen {v[f'iso_{c:.2f}']['unseen_kept']:.3f}"
                                   for c in (0.8, 0.9)))


if __name__ == "__main__":
    main()

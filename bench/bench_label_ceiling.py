"""How accurate can the default small model be on the task at all? Issue 14's diagnostic.

The quality bench trains on the simulated frontier's answers (92 % right, wrong on confusable labels),
the only labels graduate has for a train split. This bench asks what the same recipe reaches when the
labels are *right*: one arm fine-tunes on the frontier's answers (what graduate does), the other on the
data set's own labels for the same rows (what no product has, a ceiling), side by side with one torch
thread each, at the default budget. Both are scored on the pipeline's VALIDATION carve of the train
split against the data set's own labels, beside the frontier's answers for the same rows, and the
gate's fixed-sequence threshold search (margin 0.01, alpha 0.05) is run on those rows as it is on a
reviewed holdout. The test split (the quality bench's holdout) is never read.

  python bench/bench_label_ceiling.py run --snapshot <train snapshot> --data ../shared/data/banking77 \
      --labels frontier --out var/bench/ceiling/b77-frontier.json &
  python bench/bench_label_ceiling.py run ... --labels gold --out var/bench/ceiling/b77-gold.json
  python bench/bench_label_ceiling.py summarise var/bench/ceiling/*.json
  python bench/bench_label_ceiling.py            # all of it for Banking77 and HWU64 (`make bench` runs this)
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
BUDGET_S = 405.0  # the loop's share of the default run budget (bench_recipe's figure)


def gold_by_text(data_dir: Path) -> dict[str, str]:
    with (data_dir / "train.csv").open(newline="") as f:
        return {row["text"]: row["category"] for row in csv.DictReader(f)}


def gold_classes(kind, data_dir: Path):
    """text -> its true class as the model's classes name it (an intent outside the label set: the
    out-of-scope class, or None without one; a text not in the data set: None)."""
    gold = gold_by_text(data_dir)
    oos = kind.classes[-1] if len(kind.classes) > len(kind.labels) else None

    def gold_class(text: str):
        g = gold.get(text)
        return None if g is None else (g if g in kind.labels else oos)
    return gold_class


def run(args) -> dict:
    from rich.console import Console

    from bench.bench_recipe import base_recipe, load_train
    from trainer.calibrate import softmax
    from trainer.finetune import finetune, predict_logits
    from trainer.threshold import REQUEST, search_threshold

    kind, train, val = load_train(args.snapshot)
    gold_class = gold_classes(kind, args.data)

    fit_rows = [i for i, t in enumerate(train.input) if gold_class(t) is not None]
    fit = train.take(fit_rows)
    fit_labels = list(fit.label) if args.labels != "gold" else [gold_class(t) for t in fit.input]
    reviewed = []
    if args.labels == "reviewed":  # a person checks the K train rows the first model disputes most
        saved = np.load(args.suspects_from, allow_pickle=True)
        assert list(saved["inputs"]) == list(fit.input), "the suspects were saved for another train split"
        reviewed = [int(i) for i in saved["suspects"][:args.review]]
        for i in reviewed:
            fit_labels[i] = gold_class(fit.input[i])
    val_rows = [i for i, t in enumerate(val.input) if gold_class(t) is not None]
    val = val.take(val_rows)
    val_gold = [gold_class(t) for t in val.input]
    recipe = base_recipe(kind, fit, args.budget)
    # early stopping and the best state are chosen on the arm's own labels for validation, as the
    # pipeline would (frontier arm: the frontier's answers; gold arm: the gold)
    val_labels = val.label if args.labels != "gold" else val_gold
    started, cpu0 = time.perf_counter(), time.process_time()
    tuned = finetune(fit.input, kind._ids(fit_labels), val.input, kind._ids(val_labels), kind.classes,
                     recipe=recipe, base_model=None, seed=args.seed, threads=1,
                     console=Console(stderr=True, quiet=True))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    if args.save_suspects:  # train rows the model disputes, highest loss on their label first
        train_probs = softmax(predict_logits(tuned.model, tuned.tokenizer, fit.input, tuned.max_length, "cpu"))
        ids = np.array(kind._ids(fit_labels))
        loss = -np.log(train_probs[np.arange(len(ids)), ids] + 1e-12)
        disputed = np.flatnonzero(train_probs.argmax(1) != ids)
        order = disputed[np.argsort(-loss[disputed])]
        np.savez(args.save_suspects, inputs=np.array(fit.input, dtype=object), suspects=order)
        wrong = np.array([a != gold_class(t) for a, t in zip(fit_labels, fit.input)])
        model_right = np.array([kind.classes[c] == gold_class(t) for c, t in zip(train_probs.argmax(1), fit.input)])
        suspects_info = {"disputed": int(len(order)), "disputed_wrong": int(wrong[order].sum()),
                         "model_right_at": {k: round(float(model_right[order[:k]].mean()), 3) for k in (100, 250, 500, 1000) if k <= len(order)},
                         "wrong_labels": int(wrong.sum()),
                         "precision_at": {k: round(float(wrong[order[:k]].mean()), 3) for k in (100, 250, 500, 1000) if k <= len(order)}}
    else:
        suspects_info = None
    logits = predict_logits(tuned.model, tuned.tokenizer, val.input, tuned.max_length, "cpu")
    probs = softmax(logits)
    in_scope = np.array([g in kind.labels for g in val_gold])
    n_in = len(kind.labels)
    pred = probs[:, :n_in].argmax(1)  # the served answer: the best in-scope class
    conf = probs[np.arange(len(pred)), pred]
    small_ok = np.array([kind.labels[p] == g for p, g in zip(pred, val_gold)])
    frontier_ok = np.array([f == g for f, g in zip(val.label, val_gold)])
    s = small_ok[in_scope]
    f = frontier_ok[in_scope]
    choice = search_threshold(conf[in_scope], {REQUEST: (s, f)}, margin=0.01, alpha=0.05)
    noise = float(np.mean([a != gold_class(t) for a, t in zip(fit_labels, fit.input)]))
    return {"task": args.snapshot.parent.name, "labels": args.labels, "seed": args.seed, "budget_s": args.budget,
            "train_rows": len(fit), "train_label_noise": round(noise, 4), "reviewed_train_rows": len(reviewed),
            "reviewed_were_wrong": sum(fit.label[i] != fit_labels[i] for i in reviewed), "suspects": suspects_info,
            "validation_in_scope": int(in_scope.sum()),
            "small_accuracy_in_scope": round(float(s.mean()), 4), "frontier_accuracy_in_scope": round(float(f.mean()), 4),
            "search_coverage_in_scope": round(choice.coverage, 4),
            "served_accuracy_in_scope": round(choice.served_accuracy, 4),
            "threshold": choice.threshold, "best_val_on_own_labels": tuned.summary()["best_val_accuracy"],
            "epochs_run": tuned.summary()["epochs_run"], "stopped_by": tuned.stopped_by,
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load_1m": round(os.getloadavg()[0], 2),
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def out_of_fold(args) -> dict:
    """The disputed rows by models that never trained on them: two fine-tunes, each on half of the fit
    rows (half the loop budget each), each asked about the other half; ranked like trainer/disputes.py."""
    from rich.console import Console

    from bench.bench_recipe import base_recipe, load_train
    from trainer.calibrate import softmax
    from trainer.disputes import disputed_rows
    from trainer.finetune import finetune, predict_logits

    kind, train, val = load_train(args.snapshot)
    gold_class = gold_classes(kind, args.data)

    fit = train.take([i for i, t in enumerate(train.input) if gold_class(t) is not None])
    ids = np.array(kind._ids(fit.label))
    order = np.random.default_rng(args.seed).permutation(len(fit))
    halves = [np.sort(order[: len(fit) // 2]), np.sort(order[len(fit) // 2:])]
    probs = np.zeros((len(fit), len(kind.classes)))
    started, cpu0 = time.perf_counter(), time.process_time()
    for k in (0, 1):
        on, asked = halves[1 - k], halves[k]
        part = fit.take(on.tolist())
        recipe = base_recipe(kind, part, args.budget / 2)
        tuned = finetune(part.input, kind._ids(part.label), val.input, kind._ids(val.label), kind.classes,
                         recipe=recipe, base_model=None, seed=args.seed, threads=1,
                         console=Console(stderr=True, quiet=True))
        probs[asked] = softmax(predict_logits(tuned.model, tuned.tokenizer, [fit.input[i] for i in asked],
                                              tuned.max_length, "cpu"))
    suspects = disputed_rows(probs, ids, [False] * len(fit))
    np.savez(args.out.with_suffix(".npz"), inputs=np.array(fit.input, dtype=object), suspects=suspects)
    wrong = np.array([a != gold_class(t) for a, t in zip(fit.label, fit.input)])
    res = {"task": args.snapshot.parent.name, "labels": "out-of-fold disputes", "seed": args.seed,
           "budget_s": args.budget, "train_rows": len(fit), "wrong_labels": int(wrong.sum()),
           "disputed": int(len(suspects)), "disputed_wrong": int(wrong[suspects].sum()),
           "precision_at": {k: round(float(wrong[suspects[:k]].mean()), 3) for k in (100, 250, 500, 1000)
                            if k <= len(suspects)},
           "wrong_in_first_500": int(wrong[suspects[:500]].sum()),
           "wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(time.process_time() - cpu0, 1),
           "load_1m": round(os.getloadavg()[0], 2), "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return res


def summarise(args) -> None:
    loaded = [json.loads(p.read_text()) for p in args.runs]
    rows = [r for r in loaded if "small_accuracy_in_scope" in r]
    oof = [r for r in loaded if r.get("labels") == "out-of-fold disputes"]
    headline, table = [], {}
    for r in rows:
        arm = r["labels"] + (f" ({r['disputes']})" if r.get("disputes") else "")
        table[f"{r['task']} / {arm}"] = {
            k: r.get(k) for k in ("train_label_noise", "reviewed_train_rows", "reviewed_were_wrong",
                              "small_accuracy_in_scope", "frontier_accuracy_in_scope", "search_coverage_in_scope",
                              "epochs_run", "stopped_by", "cpu_s")}
        headline.append({"name": f"{r['task']}, trained on {LABELS[r['labels']]}"
                                 + (f" ({r['disputes']})" if r.get("disputes") else "") + ": validation in scope, small vs "
                                 f"frontier / coverage at parity",
                         "value": f"{r['small_accuracy_in_scope']:.3f} vs {r['frontier_accuracy_in_scope']:.3f} / "
                                  f"{r['search_coverage_in_scope']:.3f}"})
    out = {"benchmark": "label ceiling: the default recipe trained on the frontier's answers, on the data set's own "
                        "labels, and after a person checks the train labels the first model disputes",
           "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "host": f"{platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()})",
           "notes": args.notes or NOTES, "headline": headline, "results": table, "runs": rows,
           "out_of_fold_disputes": oof}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(rows, indent=1))


LABELS = {"frontier": "the frontier's answers", "gold": "the data set's labels",
          "reviewed": "the frontier's answers, disputed ones checked"}
NOTES = ("Validation split only (the pipeline's carve of train, graded against the data set's own labels; the "
         "test split is never read). Frontier = graduate's SIMULATOR at 92 % (not a real LLM). The default recipe "
         f"and a {BUDGET_S:.0f} s loop budget, one torch thread per arm; the frontier and gold arms side by side, "
         "the reviewed arm after the frontier arm (it checks that arm's disputed rows, the first 500 by loss). "
         "Coverage at parity: the gate's fixed-sequence search (margin 0.01, alpha 0.05) on the in-scope "
         "validation rows (served = small at or above the threshold, frontier below), one run each.")


def run_all(args) -> None:
    """Every arm for Banking77 and HWU64 on snapshots made like bench_quality's, then the summary."""
    import subprocess

    from bench.bench_quality import REVIEWED_TARGET, data_dir, holdout_size
    from trainer.dataset_from_banking77 import build_banking77_snapshot

    work = Path(os.environ.get("GRADUATE_VAR_DIR") or ROOT / "var") / "bench" / "label-ceiling"
    outs = []
    for name, task in (("banking77", "banking77-intent"), ("hwu64", "hwu64-intent")):
        folder = work / name
        snapshot = build_banking77_snapshot(folder / "datasets", task, data_dir(name),
                                            reviewed_share=min(1.0, REVIEWED_TARGET / holdout_size(name)),
                                            out_of_scope_share=0.1)
        base = [sys.executable, str(Path(__file__).resolve()), "run", "--snapshot", str(snapshot), "--data",
                str(data_dir(name))]
        arm = {a: folder / f"{a}.json" for a in ("frontier", "gold", "reviewed")}
        side = [subprocess.Popen(base + ["--labels", "frontier", "--save-suspects", str(folder / "suspects.npz"),
                                         "--out", str(arm["frontier"])], cwd=ROOT),
                subprocess.Popen(base + ["--labels", "gold", "--out", str(arm["gold"])], cwd=ROOT)]
        if any(p.wait() for p in side):
            raise SystemExit(f"{name}: an arm failed")
        subprocess.run(base + ["--labels", "reviewed", "--suspects-from", str(folder / "suspects.npz"),
                               "--out", str(arm["reviewed"])], cwd=ROOT, check=True)
        outs += list(arm.values())
    summarise(argparse.Namespace(runs=outs, out=RESULTS / "label_ceiling.json", notes=""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    r = sub.add_parser("run")
    r.add_argument("--snapshot", type=Path, required=True)
    r.add_argument("--data", type=Path, required=True, help="the data set's folder (train.csv: text,category)")
    r.add_argument("--labels", choices=("frontier", "gold", "reviewed"), required=True)
    r.add_argument("--save-suspects", type=Path, help="(frontier arm) save the disputed train rows, ranked")
    r.add_argument("--suspects-from", type=Path, help="(reviewed arm) the frontier arm's --save-suspects file")
    r.add_argument("--review", type=int, default=500, help="(reviewed arm) how many suspects a person checks")
    r.add_argument("--budget", type=float, default=BUDGET_S)
    r.add_argument("--seed", type=int, default=13)
    r.add_argument("--out", type=Path, required=True)
    o = sub.add_parser("oof", help="disputes by out-of-fold models (two half fine-tunes); saves OUT.npz for --suspects-from")
    o.add_argument("--snapshot", type=Path, required=True)
    o.add_argument("--data", type=Path, required=True)
    o.add_argument("--budget", type=float, default=BUDGET_S, help="split between the two fine-tunes")
    o.add_argument("--seed", type=int, default=13)
    o.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("summarise")
    s.add_argument("runs", type=Path, nargs="+")
    s.add_argument("--out", type=Path, default=RESULTS / "label_ceiling.json")
    s.add_argument("--notes", default="")
    args = parser.parse_args()
    if args.command is None:
        run_all(args)
    elif args.command == "oof":
        res = out_of_fold(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res))
    elif args.command == "run":
        res = run(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res))
    else:
        summarise(args)


if __name__ == "__main__":
    main()

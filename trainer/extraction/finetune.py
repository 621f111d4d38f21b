"""Fine-tune the small encoder for token classification (BIO tags over the task's fields).

The classification fine-tune's machinery, reused: seeded everything, length-bucketed batches with
dynamic padding, early stopping on validation loss (the best state is kept), a rich progress bar.
Padding and special tokens carry the IGNORE tag, so they add nothing to the loss.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from trainer.extraction.dataset import IGNORE
from trainer.finetune import (PREDICT_BATCH, FineTuned, collate, default_base_model, length_bucketed_batches,
                              pick_device, seed_everything)


def load_token_base(base_model: Path, tags: list[str]):
    from transformers import AutoModelForTokenClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(str(base_model), use_fast=True)
    model = AutoModelForTokenClassification.from_pretrained(
        str(base_model), num_labels=len(tags), id2label=dict(enumerate(tags)),
        label2id={tag: i for i, tag in enumerate(tags)})
    return tokenizer, model


def collate_tags(tags: list[list[int]], rows: list[int]) -> torch.Tensor:
    width = max(len(tags[r]) for r in rows)
    out = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for k, r in enumerate(rows):
        out[k, :len(tags[r])] = torch.tensor(tags[r])
    return out


@torch.no_grad()
def predict_token_logits(model, ids: list[list[int]], pad_id: int, device: torch.device | str,
                         batch_size: int = PREDICT_BATCH) -> list[np.ndarray]:
    """Per example: logits [len(ids[i]), n_tags] float32 (padding cut off)."""
    device = torch.device(device)
    model.eval()
    out: list[Optional[np.ndarray]] = [None] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate(ids, rows, pad_id).items()}
        logits = model(**batch).logits.float().cpu().numpy()
        for k, r in enumerate(rows):
            out[r] = logits[k, :len(ids[r])]
    return out  # type: ignore[return-value]


def token_loss(logits: list[np.ndarray], tags: list[list[int]]) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over tagged tokens."""
    flat = torch.from_numpy(np.concatenate(logits))
    target = torch.tensor([t for row in tags for t in row])
    keep = target != IGNORE
    loss = torch.nn.functional.cross_entropy(flat[keep], target[keep]).item()
    return loss, float((flat[keep].argmax(1) == target[keep]).float().mean())


def finetune_tokens(train_ids: list[list[int]], train_tags: list[list[int]], val_ids: list[list[int]],
                    val_tags: list[list[int]], tags: list[str], *, base_model: Optional[Path], epochs: int,
                    batch_size: int, learning_rate: float, weight_decay: float, warmup_ratio: float, max_length: int,
                    seed: int, patience: int, evals_per_epoch: int, device: str = "auto",
                    threads: Optional[int] = None, console: Optional[Console] = None) -> FineTuned:
    """Train the token head and the encoder; returns the best state by validation loss."""
    from transformers import get_linear_schedule_with_warmup

    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed, dev)
    tokenizer, model = load_token_base(base_model or default_base_model(), tags)
    model.to(dev)
    lengths = [len(x) for x in train_ids]
    rng = np.random.default_rng(seed)
    steps_per_epoch = -(-len(train_ids) // batch_size)
    total_steps = steps_per_epoch * epochs
    decay = [p for n, p in model.named_parameters() if not any(k in n for k in ("bias", "LayerNorm"))]
    rest = [p for n, p in model.named_parameters() if any(k in n for k in ("bias", "LayerNorm"))]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total_steps * warmup_ratio), total_steps)
    eval_every = max(1, steps_per_epoch // evals_per_epoch)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)

    result = FineTuned(model, tokenizer, tags, dev.type, max_length)
    best_loss, best_state, stale, step, seen = float("inf"), None, 0, 0, 0
    started = time.perf_counter()
    columns = (TextColumn("[bold]fine-tune (tokens)[/bold] epoch {task.fields[epoch]}"), BarColumn(),
               MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
               TextColumn("{task.fields[eps]:.0f} ex/s"), TextColumn("val {task.fields[val]}"), TimeElapsedColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=False) as progress:
        bar = progress.add_task("train", total=total_steps, epoch=1, loss=float("nan"), eps=0.0, val="-")
        for epoch in range(1, epochs + 1):
            model.train()
            running = None
            for batch_no, rows in enumerate(length_bucketed_batches(lengths, batch_size, rng), start=1):
                batch = {k: v.to(dev) for k, v in collate(train_ids, rows, tokenizer.pad_token_id).items()}
                target = collate_tags(train_tags, rows).to(dev)
                with autocast:
                    logits = model(**batch).logits
                loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, len(tags)), target.reshape(-1),
                                                         ignore_index=IGNORE)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step, seen = step + 1, seen + len(rows)
                running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
                progress.update(bar, advance=1, epoch=epoch, loss=running, eps=seen / (time.perf_counter() - started))
                if batch_no % eval_every and batch_no != steps_per_epoch:
                    continue
                val_loss, val_acc = token_loss(predict_token_logits(model, val_ids, tokenizer.pad_token_id, dev),
                                               val_tags)
                model.train()
                result.history.append({"step": step, "epoch": epoch, "train_loss": running,
                                       "val_loss": val_loss, "val_token_accuracy": val_acc})
                progress.update(bar, val=f"loss {val_loss:.3f} tok-acc {val_acc:.3f}")
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

"""Fine-tune the small encoder for token classification (BIO tags over the task's fields).

The classification fine-tune's loop, shared (`trainer.finetune.train_loop`): seeded everything,
length-bucketed batches with dynamic padding, a schedule that fits the time budget, early stopping
on validation token accuracy (the best state is kept), a rich progress bar.
Padding and special tokens carry the IGNORE tag, so they add nothing to the loss.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from rich.console import Console

from trainer.extraction.dataset import IGNORE
from trainer.finetune import PREDICT_BATCH, FineTuned, collate, default_base_model, prepare, train_loop
from trainer.recipe import Recipe


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
                    val_tags: list[list[int]], tags: list[str], *, recipe: Recipe, base_model: Optional[Path],
                    seed: int, device: str = "auto", threads: Optional[int] = None,
                    console: Optional[Console] = None) -> FineTuned:
    """Train the token head and the encoder (the shared loop); returns the best state."""
    dev, autocast, tune_threads = prepare(device, threads, seed)
    tokenizer, model = load_token_base(base_model or default_base_model(), tags)
    model.to(dev)

    def step_loss(rows: list[int]) -> torch.Tensor:
        batch = {k: v.to(dev) for k, v in collate(train_ids, rows, tokenizer.pad_token_id).items()}
        target = collate_tags(train_tags, rows).to(dev)
        with autocast:
            logits = model(**batch).logits
        return torch.nn.functional.cross_entropy(logits.float().reshape(-1, len(tags)), target.reshape(-1),
                                                 ignore_index=IGNORE)

    def validate() -> tuple[float, float]:
        return token_loss(predict_token_logits(model, val_ids, tokenizer.pad_token_id, dev), val_tags)

    result = FineTuned(model, tokenizer, tags, dev.type, recipe.max_length, recipe)
    return train_loop(model, lengths=[len(x) for x in train_ids], step_loss=step_loss, validate=validate,
                      recipe=recipe, seed=seed, head_prefix="classifier.", result=result,
                      label="fine-tune (tokens)", console=console, tune_threads=tune_threads)

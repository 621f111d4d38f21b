"""`graduate train`, `graduate snapshot-banking77`, `graduate snapshot-restaurant8k` and `graduate trainer-service`.

torch, transformers and onnxruntime are imported inside the commands, so `graduate --help`
stays fast.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import ValidationError
from rich.console import Console

from services.common.settings import REPO_ROOT

console = Console(stderr=True)


def trainer_settings(**overrides: Any):
    """TrainerSettings from the environment plus the given (non-None) overrides; exits on bad values."""
    from trainer.settings import TrainerSettings

    try:
        return TrainerSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise SystemExit("invalid trainer settings (GRADUATE_TRAIN_* / GRADUATE_* or options):\n" + "\n".join(lines)) from None


def train(
    task: str = typer.Option(..., "--task", help="task name from config/tasks.yaml"),
    snapshot: str = typer.Option("latest", "--snapshot", help="snapshot id under <var>/datasets/<task>/, or latest"),
    base_model: Optional[Path] = typer.Option(None, "--base-model", help="local HF encoder dir (default MiniLM-L6)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="maximum epochs"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),
    max_examples: Optional[int] = typer.Option(None, "--max-examples", help="cap on train examples"),
    labels_subset: Optional[int] = typer.Option(None, "--labels-subset", help="train on the first K labels only"),
    triton_model: Optional[str] = typer.Option(None, "--triton-model", help="Triton model name (default: task)"),
    no_publish: bool = typer.Option(False, "--no-publish", help="do not send ModelRegistered"),
    no_load: bool = typer.Option(False, "--no-load", help="write the Triton version but do not load it"),
) -> None:
    """Fine-tune, calibrate, export and serve a new model version of TASK from a dataset snapshot
    (a classification head, or BIO token tags for an extraction task)."""
    from services.common.tasks import load_tasks
    from trainer.pipeline import TrainingRefused, train_for_kind
    from trainer.publish import publish_model_registered
    from trainer.snapshot import SnapshotError
    from trainer.triton_repo import TritonError

    settings = trainer_settings(base_model=base_model, epochs=epochs, device=device, max_examples=max_examples,
                                labels_subset=labels_subset, triton_model=triton_model,
                                load=False if no_load else None, publish=False if no_publish else None)
    try:
        spec = load_tasks(settings.tasks_file).get(task)
    except KeyError as exc:
        raise SystemExit(f"graduate train: {exc.args[0]}") from None
    if not spec.graduatable:
        raise SystemExit(f"task {task} is {spec.kind}; the trainer trains classification and extraction tasks")
    try:
        run = train_for_kind(spec.kind)(settings, task, snapshot, console)
    except (SnapshotError, TrainingRefused, TritonError) as exc:
        raise SystemExit(f"graduate train: {exc}") from None
    if run.event is not None:  # the event beside the run, for the bench and for people
        (run.run_dir / "model_registered.json").write_text(run.event.model_dump_json(indent=2) + "\n")
    if settings.publish and run.event is not None:
        topic = asyncio.run(publish_model_registered(settings, run.event))
        console.print(f"published ModelRegistered {run.event.task}/{run.event.version} to {topic}")
    console.print(f"model card: {run.model_card}")
    print(run.version_dir)


def snapshot_banking77(
    task: str = typer.Option("banking77-intent", "--task"),
    data_dir: Path = typer.Option(REPO_ROOT / "data" / "banking77", "--data-dir"),
    labels_subset: Optional[int] = typer.Option(None, "--labels-subset", help="first K labels only"),
    per_label_train: Optional[int] = typer.Option(None, "--per-label-train"),
    per_label_holdout: Optional[int] = typer.Option(None, "--per-label-holdout"),
    reviewed_share: float = typer.Option(0.3, "--reviewed-share", help="share of the holdout with reviewed labels"),
    frontier_accuracy: float = typer.Option(0.92, "--frontier-accuracy", help="the simulated frontier's accuracy"),
    out_of_scope_share: float = typer.Option(0.0, "--out-of-scope-share", help="share of the intents taken out of "
                                             "the label set (the frontier answers them 'other')"),
    review_disputed: Optional[Path] = typer.Option(
        None, "--review-disputed", help="a run's disputed_labels.json: its first --review-limit train rows get "
        "their true label, as if a person checked them on the review page"),
    review_limit: int = typer.Option(500, "--review-limit", help="how many disputed train labels the person checks"),
) -> None:
    """Build a dataset snapshot from an intent CSV folder (Banking77, HWU64) with simulated frontier labels."""
    from trainer.dataset_from_banking77 import build_banking77_snapshot

    settings = trainer_settings()
    reviewed_train = None
    if review_disputed is not None:
        try:
            items = json.loads(review_disputed.read_text())
            reviewed_train = {item["normalised_hash"] for item in items[:review_limit]}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise SystemExit(f"graduate snapshot-banking77: --review-disputed {review_disputed}: {exc}") from None
    try:
        path = build_banking77_snapshot(settings.datasets_dir, task, data_dir, labels_subset=labels_subset,
                                        per_label_train=per_label_train, per_label_holdout=per_label_holdout,
                                        reviewed_share=reviewed_share, frontier_accuracy=frontier_accuracy,
                                        out_of_scope_share=out_of_scope_share, reviewed_train=reviewed_train)
    except ValueError as exc:
        raise SystemExit(f"graduate snapshot-banking77: {exc}") from None
    print(path)


def snapshot_restaurant8k(
    task: str = typer.Option("restaurant8k-booking", "--task"),
    data_dir: Path = typer.Option(REPO_ROOT / "data" / "restaurant8k", "--data-dir"),
    max_train: Optional[int] = typer.Option(None, "--max-train", help="at most this many train utterances"),
    max_holdout: Optional[int] = typer.Option(None, "--max-holdout", help="at most this many holdout utterances"),
    reviewed_share: float = typer.Option(0.3, "--reviewed-share", help="share of the holdout with reviewed labels"),
) -> None:
    """Build a dataset snapshot from data/restaurant8k with simulated frontier JSON answers (until the curator runs)."""
    from services.common.tasks import load_tasks
    from trainer.extraction.dataset_from_restaurant8k import build_restaurant8k_snapshot

    settings = trainer_settings()
    try:
        spec = load_tasks(settings.tasks_file).get(task)
        path = build_restaurant8k_snapshot(settings.datasets_dir, spec, data_dir, max_train=max_train,
                                           max_holdout=max_holdout, reviewed_share=reviewed_share)
    except (KeyError, ValueError) as exc:
        raise SystemExit(f"graduate snapshot-restaurant8k: {exc}") from None
    print(path)


def trainer_service() -> None:
    """Run the trainer worker: train a new version whenever a retrain request arrives."""
    from trainer.service import run

    asyncio.run(run())


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("snapshot-banking77")(snapshot_banking77)
    app.command("snapshot-restaurant8k")(snapshot_restaurant8k)
    app.command("trainer-service")(trainer_service)

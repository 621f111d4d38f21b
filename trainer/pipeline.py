"""One training run, end to end, for every task kind: snapshot -> served, verified model version +
its evidence.

The pipeline owns the steps every kind shares (snapshot, validation carve, run folder, ONNX
export and parity, int8, calibration, the threshold, the gate's view, the Triton repository,
load and verify, the model card, metrics and the ModelRegistered event); the kind
(trainer.kinds.classification, trainer.kinds.extraction) owns what differs. `train_task` and
`train_extraction_task` return the event without sending it; the CLI and the service publish it
(async), so this module stays synchronous and broker-free.

The threshold is the lowest whose served answers pass the offline gate's own non-inferiority
test on the gate's basis, found by the fixed-sequence search of trainer.threshold, which the
gate replays from metrics_json.threshold_search (docs/DESIGN.md, "The threshold").
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from rich.console import Console

from services.common.contracts import ModelRegistered
from services.common.tasks import TaskSpec, load_tasks
from services.controller.settings import ControllerSettings
from trainer import calibrate, evaluate, export, snapshot as snap, triton_repo
from trainer.kinds import Evaluation, TrainingRefused
from trainer.kinds.classification import Classification, select_rows
from trainer.kinds.extraction import Extraction
from trainer.publish import model_registered
from trainer.settings import TrainerSettings
from trainer.threshold import search_threshold

__all__ = ["TrainRun", "TrainingRefused", "run_pipeline", "select_rows", "train_extraction_task", "train_for_kind",
           "train_task"]
CURVE_POINTS = 40


@dataclass
class TrainRun:
    report: dict[str, Any]
    event: Optional[ModelRegistered]
    run_dir: Path
    version: Optional[int]
    version_dir: Optional[Path]
    model_card: Path


def sample_curve(curve: calibrate.CoverageCurve, points: int = CURVE_POINTS) -> list[dict[str, float]]:
    idx = np.unique(np.linspace(0, len(curve.threshold) - 1, min(points, len(curve.threshold))).astype(int))
    return [{"threshold": float(curve.threshold[i]), "coverage": float(curve.coverage[i]),
             "kept_accuracy": float(curve.kept_accuracy[i])} for i in idx]


def _phase(timings: dict[str, float], name: str, started: float) -> float:
    timings[name] = round(time.perf_counter() - started, 3)
    return time.perf_counter()


def train_task(settings: TrainerSettings, task: str, snapshot_ref: str = "latest",
               console: Optional[Console] = None) -> TrainRun:
    """Train, export, calibrate, evaluate, serve and document one version of classification task `task`."""
    return run_pipeline(Classification(), settings, task, snapshot_ref, console)


def train_extraction_task(settings: TrainerSettings, task: str, snapshot_ref: str = "latest",
                          console: Optional[Console] = None, spec: Optional[TaskSpec] = None) -> TrainRun:
    """The same for extraction task `task` (BIO token tags; its spec from the tasks file unless given)."""
    return run_pipeline(Extraction(spec or load_tasks(settings.tasks_file).get(task)), settings, task, snapshot_ref,
                        console)


def train_for_kind(kind: str) -> Callable[..., TrainRun]:
    """The run for a task kind: `train_task` (classification) or `train_extraction_task`."""
    runs = {"classification": train_task, "extraction": train_extraction_task}
    if kind not in runs:
        raise TrainingRefused(f"a {kind} task is not trained")
    return runs[kind]


def run_pipeline(kind, settings: TrainerSettings, task: str, snapshot_ref: str = "latest",
                 console: Optional[Console] = None) -> TrainRun:
    """Train, export, calibrate, evaluate, serve and document one version of `task` with `kind`."""
    from trainer.finetune import carve_validation, default_base_model

    console = console or Console(stderr=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    data = snap.load_snapshot(snap.resolve_snapshot(settings.datasets_dir, task, snapshot_ref))
    if data.task != task:
        raise snap.SnapshotError(f"snapshot {data.path} is of task {data.task!r}, not {task!r}")
    train_all, holdout = kind.select(data, settings)
    fit_rows, val_rows = carve_validation(len(train_all), settings.validation_fraction, settings.seed)
    train, val = train_all.take(fit_rows), train_all.take(val_rows)
    base_model = settings.base_model or default_base_model()
    recipe = kind.plan(settings, base_model, train)  # the fine-tune's settings, from the data (trainer/recipe.py)
    console.print(f"snapshot [bold]{data.snapshot_id}[/bold]: {kind.describe(settings, base_model, train, val, holdout)}")
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    name = settings.model_name_for(task)
    run_dir = settings.runs_dir / name / run_id
    run_dir.mkdir(parents=True)
    t = _phase(timings, "snapshot_s", t)

    tuned = kind.finetune(settings, base_model, train, val, console)
    hf_dir = tuned.save(run_dir / "hf")
    t = _phase(timings, "finetune_s", t)

    # The train labels the model disputes (likeliest frontier errors), for a person to check: the next
    # run learns from what they say (trainer/disputes.py). All of them in the run folder, the first
    # LISTED with the model.
    disputed = kind.disputes(settings, tuned, train_all)
    label_review = None
    if disputed is not None:
        label_review, every_item = disputed
        (run_dir / "disputed_labels.json").write_text(json.dumps(every_item, indent=1) + "\n")
        console.print(f"train labels the model disputes: {label_review['disputed']} of {label_review['rows']} rows "
                      f"(likeliest frontier errors first; the first {label_review['listed']} go to the review page)")
    t = _phase(timings, "disputes_s", t)

    torch_holdout = kind.torch_logits(settings, tuned, holdout)
    exported = export.export_onnx(hf_dir, run_dir / "onnx" / "model.onnx", settings.exporter, kind.export_task)
    stage = run_dir / "version"
    meta = {"task": task, "triton_model": name, "base_model": str(base_model), "snapshot_id": data.snapshot_id,
            "max_length": recipe.max_length, "run_id": run_id,
            "created_at": datetime.now(timezone.utc).isoformat()} | kind.meta()
    fp32 = kind.stage(settings, stage, exported.path, tuned.tokenizer, meta | {"onnx": "fp32"})
    parity = kind.parity(settings, torch_holdout, fp32, holdout)
    console.print(f"export ({exported.exporter}, {exported.seconds:.1f} s): max |Δlogit| "
                  f"{parity['max_abs_logit_delta']:.2e}, argmax agreement {parity['argmax_agreement']:.4f}")
    if not parity["ok"]:
        raise TrainingRefused(f"ONNX export does not match torch on the holdout: {parity}")
    t = _phase(timings, "export_s", t)

    served, quant = fp32, {"tried": False, "kept": False, "summary": "not tried"}
    if settings.quantize:
        served, quant = kind.quantize(settings, run_dir, stage, fp32, holdout)
    console.print(f"int8: {quant['summary']}")
    t = _phase(timings, "quantize_s", t)

    temperature, validation_accuracy = kind.fit_temperature(served, val)
    ev: Evaluation = kind.evaluate(settings, served, holdout, temperature)
    ece_before = calibrate.expected_calibration_error(ev.confidence_before, ev.small_ok, settings.ece_bins)
    ece_after = calibrate.expected_calibration_error(ev.confidence, ev.small_ok, settings.ece_bins)
    curve = calibrate.coverage_accuracy_curve(ev.confidence, ev.small_ok)
    # Gold on the unreviewed holdout is the frontier's own answer, so there the frontier is right by
    # construction; with enough reviewed items, the threshold and the gate's tables are measured on
    # people's labels only (gate_basis), and the report says which.
    reviewed = np.array(holdout.reviewed, dtype=bool)
    basis = settings.gate_basis
    if basis == "auto":
        basis = "reviewed" if int(reviewed.sum()) >= settings.min_reviewed_gold else "all"
    on = reviewed if basis == "reviewed" else np.ones(len(ev.small_ok), dtype=bool)
    gate = ControllerSettings()  # the offline gate's margin and alpha: the search runs the gate's own test
    choice = search_threshold(ev.confidence[on], {k: (s[on], f[on]) for k, (s, f) in ev.checks.items()},
                              gate.margin, gate.alpha)
    gate_view = _gate_view(ev.confidence, ev.small_ok, ev.frontier_ok, ev.predicted, ev.frontier, on,
                           choice.threshold) | {"basis": basis} | kind.gate_extras(ev, on, choice.threshold, settings)
    console.print(f"gate basis: {basis} ({int(on.sum())} holdout items); threshold {choice.threshold}, coverage "
                  f"{choice.coverage:.3f} (fixed-sequence search, {len(choice.steps)} steps, margin {gate.margin:g}, "
                  f"alpha {gate.alpha:g})")
    t = _phase(timings, "calibrate_evaluate_s", t)

    if quant["kept"]:
        shutil.copyfile(run_dir / "onnx" / "model.int8.onnx", stage / "model.onnx")
    (stage / "calibration.json").write_text(json.dumps({"method": "temperature", "temperature": temperature}) + "\n")
    meta_file = stage / "version.json"
    meta_file.write_text(json.dumps(json.loads(meta_file.read_text()) | {"onnx": "int8" if quant["kept"] else "fp32"},
                                    indent=2, sort_keys=True) + "\n")
    version, version_dir = triton_repo.install_version(stage, settings.model_repository, name,
                                                       gpu=settings.device == "cuda", **kind.install_args)
    train_size, validation_size = kind.sizes(train, val)
    h = ev.report
    report: dict[str, Any] = {
        "task": task, "version": version, "triton_model": name, "run_id": run_id, "snapshot_id": data.snapshot_id,
        "base_model": str(base_model), "device": tuned.device, "train_size": train_size,
        "validation_size": validation_size, "holdout": h,
        "frontier_source": data.manifest.get("source", {}).get("frontier", {}).get(
            "kind", "the frontier answers captured by the curator"),
        "temperature": temperature, "ece_before": ece_before, "ece_after": ece_after,
        "threshold": choice.as_dict(), "threshold_search": choice.search_record(), "gate": gate_view,
        "curve": sample_curve(curve),
        "export": {"exporter": exported.exporter, "seconds": exported.seconds,
                   "fallback_reason": exported.fallback_reason},
        "parity": parity, "quantization": quant, "served_onnx": "int8" if quant["kept"] else "fp32",
        "finetune": tuned.summary() | {"seed": settings.seed, "validation_accuracy": validation_accuracy},
        "timings": timings,
    } | kind.report_extras(choice.threshold) | ({"label_review": label_review} if label_review is not None else {})
    console.print(f"holdout: small {h['small_accuracy']:.4f}, frontier {h['frontier_accuracy']:.4f} (gold: "
                  f"{h['gold_reviewed']} reviewed, {h['gold_frontier']} frontier); validation {validation_accuracy:.4f}; "
                  f"T={temperature:.3f}, ECE {ece_before:.4f} -> {ece_after:.4f}; threshold {choice.threshold} "
                  f"coverage {choice.coverage:.3f}, served accuracy {choice.served_accuracy:.4f}")

    if settings.load:
        try:
            report["timings"]["triton_load_s"] = triton_repo.load_model(
                settings.triton_http_url, name, version, settings.triton_timeout_s)
            check = kind.verify(settings, name, version, version_dir, holdout.input[:settings.verify_examples],
                                torch_holdout)
            report["triton_verify"] = check
            console.print(f"triton: {name} version {version} loaded and verified ({check['summary']})")
        except Exception:
            _withdraw(settings, name, version)
            raise
    t = _phase(timings, "triton_s", t)

    card, served_card = kind.model_card(settings, run_dir, report, curve, ev, version_dir)
    _phase(timings, "model_card_s", t)
    (run_dir / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    metrics = {"paired_at_threshold": gate_view["paired_at_threshold"], "kept_agreement": gate_view["kept_agreement"],
               "gate_basis": basis, "threshold_search": report["threshold_search"],
               "fit": _fit_record(report["finetune"])} | kind.metrics_extras(report) | {
        k: gate_view[k] for k in ("fallback_by_label",) if k in gate_view} | {
        k: report[k] for k in ("holdout", "parity", "quantization", "curve", "export", "timings", "threshold",
                               "train_size", "validation_size", "frontier_source", "run_id")} | {
        "triton_verify": report.get("triton_verify"), "run_dir": str(run_dir)} | {
        k: report[k] for k in ("label_review",) if k in report}
    event = model_registered(
        task=task, version=version, base_model=str(base_model), snapshot_id=data.snapshot_id,
        holdout=_published_holdout(h, basis), threshold=choice.as_dict(), ece_before=ece_before,
        ece_after=ece_after, temperature=temperature, labels=kind.labels, metrics=metrics,
        artifact_uri=version_dir.resolve().as_uri(), model_card_uri=served_card.resolve().as_uri(),
        triton_model=name)
    return TrainRun(report, event, run_dir, version, version_dir, card)


def _fit_record(finetune: dict[str, Any]) -> dict[str, Any]:
    """What the trainer tried, for the gate's reason when the model is far below the frontier."""
    recipe = finetune.get("recipe") or {}
    fit = {k: finetune.get(k) for k in ("epochs", "epochs_run", "stopped_early", "stopped_by", "best_step",
                                        "batch_size", "max_length", "validation_accuracy")}
    fit["learning_rate"] = recipe.get("learning_rate")
    values = [row["val_accuracy"] for row in finetune.get("history", [])
              if isinstance(row.get("val_accuracy"), (int, float))]
    if values:
        fit["best_validation_accuracy"] = max(values)
    return fit


def _gate_view(confidence: np.ndarray, small_ok: np.ndarray, frontier_ok: np.ndarray, predicted: list[str],
               frontier: list[str], on: np.ndarray, threshold: float | None) -> dict[str, Any]:
    """What the gate tests: the served answer (small above the threshold, frontier below) vs the frontier."""
    kept = confidence >= threshold if threshold is not None else np.zeros(len(confidence), dtype=bool)
    served_ok = np.where(kept, small_ok, frontier_ok)
    agree = np.array([p == f for p, f in zip(predicted, frontier)], dtype=bool)
    return {"n": int(on.sum()), "threshold": threshold,
            "paired_at_threshold": evaluate.paired_counts(served_ok[on], frontier_ok[on]).model_dump(),
            "kept_agreement": float(agree[kept].mean()) if kept.any() else 0.0,
            "served_accuracy": float(served_ok[on].mean()) if on.any() else 0.0}


def _published_holdout(report: dict[str, Any], basis: str) -> dict[str, Any]:
    """The holdout figures ModelRegistered carries: on people's labels only when basis is 'reviewed'."""
    if basis != "reviewed":
        return report
    return report | report["reviewed_only"] | {"gold_reviewed": report["reviewed_only"]["n"], "gold_frontier": 0}


def _withdraw(settings: TrainerSettings, name: str, version: int) -> None:
    """Take a version that failed to load or verify back out of the repository (and of Triton)."""
    triton_repo.remove_version(settings.model_repository, name, version)
    try:
        if triton_repo.existing_versions(settings.model_repository / name):
            triton_repo.load_model(settings.triton_http_url, name, None, settings.triton_timeout_s)
        else:
            triton_repo.unload_model(settings.triton_http_url, name)
            shutil.rmtree(settings.model_repository / name, ignore_errors=True)
    except Exception:  # noqa: BLE001 - best effort; the original failure is what gets raised
        pass

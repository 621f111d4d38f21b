"""One training run, end to end: snapshot -> served, verified model version + its evidence.

`train_task` composes the steps and returns the ModelRegistered event without sending it; the
CLI and the service publish it (async), so this module stays synchronous and broker-free.
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
from rich.console import Console

from services.common.contracts import ModelRegistered
from trainer import calibrate, evaluate, export, model_card, scope, snapshot as snap, triton_repo
from trainer.publish import model_registered
from trainer.settings import TrainerSettings

CURVE_POINTS = 40


@dataclass
class TrainRun:
    report: dict[str, Any]
    event: Optional[ModelRegistered]
    run_dir: Path
    version: Optional[int]
    version_dir: Optional[Path]
    model_card: Path


class TrainingRefused(RuntimeError):
    """The run produced nothing servable (parity failed, Triton refused it); the text says why."""


def select_rows(data: snap.Snapshot, settings: TrainerSettings) -> tuple[list[str], snap.Split, snap.Split]:
    """Labels to train on, and train/holdout restricted to them (and capped by max_examples)."""
    labels = data.labels[:settings.labels_subset] if settings.labels_subset else data.labels
    keep = set(labels) | ({data.out_of_scope_label} if data.out_of_scope_label else set())
    train = data.train.take([i for i, label in enumerate(data.train.label) if label in keep])
    holdout = data.holdout.take([i for i, label in enumerate(data.holdout.label) if label in keep])
    if settings.max_examples and len(train) > settings.max_examples:
        rng = np.random.default_rng(settings.seed)
        train = train.take(sorted(rng.choice(len(train), settings.max_examples, replace=False).tolist()))
    return labels, train, holdout


def sample_curve(curve: calibrate.CoverageCurve, points: int = CURVE_POINTS) -> list[dict[str, float]]:
    idx = np.unique(np.linspace(0, len(curve.threshold) - 1, min(points, len(curve.threshold))).astype(int))
    return [{"threshold": float(curve.threshold[i]), "coverage": float(curve.coverage[i]),
             "kept_accuracy": float(curve.kept_accuracy[i])} for i in idx]


def _phase(timings: dict[str, float], name: str, started: float) -> float:
    timings[name] = round(time.perf_counter() - started, 3)
    return time.perf_counter()


def train_task(settings: TrainerSettings, task: str, snapshot_ref: str = "latest",
               console: Optional[Console] = None) -> TrainRun:
    """Train, export, calibrate, evaluate, serve and document one version of `task`."""
    from trainer.finetune import carve_validation, default_base_model, finetune, pick_device, predict_logits, token_lengths
    from trainer.recipe import choose_recipe
    from trainer.triton_model import TextClassifier

    console = console or Console(stderr=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    data = snap.load_snapshot(snap.resolve_snapshot(settings.datasets_dir, task, snapshot_ref))
    if data.task != task:
        raise snap.SnapshotError(f"snapshot {data.path} is of task {data.task!r}, not {task!r}")
    labels, train_all, holdout = select_rows(data, settings)
    classes = scope.class_labels(labels, data.out_of_scope_label, train_all.label)
    if len(classes) == len(labels):  # too few out-of-scope rows to learn from: not trained on
        train_all = train_all.take([i for i, x in enumerate(train_all.label) if x in set(labels)])
    index = {label: i for i, label in enumerate(classes)}
    fit_rows, val_rows = carve_validation(len(train_all), settings.validation_fraction, settings.seed)
    train, val = train_all.take(fit_rows), train_all.take(val_rows)
    console.print(f"snapshot [bold]{data.snapshot_id}[/bold]: {len(train)} train, {len(val)} validation, "
                  f"{len(holdout)} holdout ({sum(holdout.reviewed)} reviewed), {len(labels)} labels"
                  + (f" + out-of-scope class {classes[-1]!r}" if len(classes) > len(labels) else ""))
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    name = settings.model_name_for(task)
    run_dir = settings.runs_dir / name / run_id
    run_dir.mkdir(parents=True)
    t = _phase(timings, "snapshot_s", t)

    base_model = settings.base_model or default_base_model()
    recipe = choose_recipe(settings, n_train=len(train), n_labels=len(classes), device=pick_device(settings.device).type,
                           token_lengths=token_lengths(base_model, train.input))
    tuned = finetune(train.input, [index[x] for x in train.label], val.input, [index[x] for x in val.label], classes,
                     recipe=recipe, base_model=base_model, seed=settings.seed, device=settings.device,
                     threads=settings.threads, console=console)
    hf_dir = tuned.save(run_dir / "hf")
    t = _phase(timings, "finetune_s", t)

    torch_holdout = predict_logits(tuned.model, tuned.tokenizer, holdout.input, recipe.max_length, tuned.device)
    exported = export.export_onnx(hf_dir, run_dir / "onnx" / "model.onnx", settings.exporter)
    stage = run_dir / "version"
    meta = {"task": task, "triton_model": name, "base_model": str(base_model), "snapshot_id": data.snapshot_id,
            "max_length": recipe.max_length, "run_id": run_id, "created_at": datetime.now(timezone.utc).isoformat()}
    if len(classes) > len(labels):
        meta["out_of_scope_label"] = classes[-1]
    triton_repo.stage_version(stage, exported.path, tuned.tokenizer, classes, 1.0, meta | {"onnx": "fp32"})
    fp32 = TextClassifier(stage, threads=settings.threads or 0)
    onnx_holdout = fp32.logits(holdout.input)
    parity = export.parity(torch_holdout, onnx_holdout, settings.parity_max_logit_delta, settings.parity_min_agreement)
    console.print(f"export ({exported.exporter}, {exported.seconds:.1f} s): max |Δlogit| "
                  f"{parity['max_abs_logit_delta']:.2e}, argmax agreement {parity['argmax_agreement']:.4f}")
    if not parity["ok"]:
        raise TrainingRefused(f"ONNX export does not match torch on the holdout: {parity}")
    t = _phase(timings, "export_s", t)

    gold_idx = np.array([index.get(x, -1) for x in holdout.label])
    served, served_holdout, quant = fp32, onnx_holdout, {"tried": settings.quantize, "kept": False}
    acc_fp32 = float(np.mean(onnx_holdout.argmax(1) == gold_idx))
    if settings.quantize:
        int8_path = export.quantize_int8(exported.path, run_dir / "onnx" / "model.int8.onnx")
        shutil.copyfile(int8_path, stage / "model.int8.onnx")
        int8 = TextClassifier(stage, onnx_file="model.int8.onnx", threads=settings.threads or 0)
        int8_holdout = int8.logits(holdout.input)
        acc_int8 = float(np.mean(int8_holdout.argmax(1) == gold_idx))
        drop = acc_fp32 - acc_int8
        quant.update(accuracy_fp32=acc_fp32, accuracy_int8=acc_int8, accuracy_drop=drop,
                     max_drop=settings.int8_max_accuracy_drop,
                     argmax_agreement_with_fp32=float(np.mean(int8_holdout.argmax(1) == onnx_holdout.argmax(1))),
                     kept=drop <= settings.int8_max_accuracy_drop)
        if quant["kept"]:
            served, served_holdout = int8, int8_holdout
        (stage / "model.int8.onnx").unlink()
    quant["summary"] = ("not tried" if not settings.quantize else
                        f"{'kept' if quant['kept'] else 'rejected'} — holdout accuracy {quant['accuracy_int8']:.4f} vs "
                        f"fp32 {quant['accuracy_fp32']:.4f} (drop {quant['accuracy_drop']:+.4f}, bound "
                        f"{quant['max_drop']:.4f})")
    console.print(f"int8: {quant['summary']}")
    t = _phase(timings, "quantize_s", t)

    served_val = served.logits(val.input)
    temperature = calibrate.fit_temperature(served_val, np.array([index[x] for x in val.label]))
    probs_before = calibrate.softmax(served_holdout)
    probs_after = calibrate.softmax(served_holdout, temperature)
    predicted_idx, conf_after = scope.in_scope_answers(probs_after, len(labels))
    conf_before = scope.in_scope_answers(probs_before, len(labels))[1]
    correct = predicted_idx == gold_idx
    ece_before = calibrate.expected_calibration_error(conf_before, correct, settings.ece_bins)
    ece_after = calibrate.expected_calibration_error(conf_after, correct, settings.ece_bins)
    predicted = [labels[i] for i in predicted_idx]
    holdout_report = evaluate.evaluate_holdout(classes, holdout.label, holdout.frontier_label, holdout.reviewed, predicted)
    target = settings.target_accuracy or holdout_report["frontier_accuracy"]
    curve = calibrate.coverage_accuracy_curve(conf_after, correct)
    choice = calibrate.choose_threshold(conf_after, correct, target, settings.min_kept)
    reviewed = np.array(holdout.reviewed, dtype=bool)
    choice_reviewed = calibrate.choose_threshold(  # for the record: both graded by people only
        conf_after[reviewed], correct[reviewed],
        settings.target_accuracy or holdout_report["reviewed_only"]["frontier_accuracy"], settings.min_kept)
    # Gold on the unreviewed holdout is the frontier's own answer, so there the frontier is right by
    # construction; with enough reviewed items, the threshold and the gate's paired table are
    # measured on people's labels only (gate_basis), and the report says which.
    basis = settings.gate_basis
    if basis == "auto":
        basis = "reviewed" if int(reviewed.sum()) >= settings.min_reviewed_gold else "all"
    on = reviewed if basis == "reviewed" else np.ones(len(correct), dtype=bool)
    published = choice_reviewed if basis == "reviewed" else choice
    confidence = conf_after
    frontier_ok = np.array(holdout.frontier_label) == np.array(holdout.label)
    gate_view = _gate_view(confidence, correct, frontier_ok, predicted, list(holdout.frontier_label), on,
                           published.threshold)
    gate_view["basis"] = basis
    console.print(f"gate basis: {basis} ({int(on.sum())} holdout items); threshold {published.threshold}, "
                  f"coverage {published.coverage:.3f}")
    t = _phase(timings, "calibrate_evaluate_s", t)

    if quant["kept"]:
        shutil.copyfile(run_dir / "onnx" / "model.int8.onnx", stage / "model.onnx")
    (stage / "calibration.json").write_text(json.dumps({"method": "temperature", "temperature": temperature}) + "\n")
    meta_file = stage / "version.json"
    meta_file.write_text(json.dumps(json.loads(meta_file.read_text()) | {"onnx": "int8" if quant["kept"] else "fp32"},
                                    indent=2, sort_keys=True) + "\n")
    version, version_dir = triton_repo.install_version(stage, settings.model_repository, name,
                                                       gpu=settings.device == "cuda")
    report: dict[str, Any] = {
        "task": task, "version": version, "triton_model": name, "run_id": run_id, "snapshot_id": data.snapshot_id,
        "base_model": str(base_model), "device": tuned.device, "labels": labels,
        "train_size": len(train), "validation_size": len(val), "holdout": holdout_report,
        "frontier_source": data.manifest.get("source", {}).get("frontier", {}).get(
            "kind", "the frontier answers captured by the curator"),
        "temperature": temperature, "ece_before": ece_before, "ece_after": ece_after,
        "threshold": choice.as_dict(), "threshold_reviewed_only": choice_reviewed.as_dict(),
        "gate": gate_view,
        "out_of_scope": _out_of_scope_view(data.out_of_scope_label, classes, labels, holdout, conf_after,
                                           published.threshold),
        "curve": sample_curve(curve),
        "export": {"exporter": exported.exporter, "seconds": exported.seconds,
                   "fallback_reason": exported.fallback_reason},
        "parity": parity, "quantization": quant, "served_onnx": "int8" if quant["kept"] else "fp32",
        "finetune": tuned.summary() | {"seed": settings.seed},
        "timings": timings,
    }
    console.print(f"holdout: small {holdout_report['small_accuracy']:.4f}, frontier {holdout_report['frontier_accuracy']:.4f} "
                  f"(gold: {holdout_report['gold_reviewed']} reviewed, {holdout_report['gold_frontier']} frontier); "
                  f"T={temperature:.3f}, ECE {ece_before:.4f} -> {ece_after:.4f}; threshold {choice.threshold} "
                  f"coverage {choice.coverage:.3f}")

    if settings.load:
        try:
            report["timings"]["triton_load_s"] = triton_repo.load_model(
                settings.triton_http_url, name, version, settings.triton_timeout_s)
            sample = holdout.input[:settings.verify_examples]
            expected_labels, _, expected_probs = TextClassifier(version_dir).classify(sample)
            check = triton_repo.verify(settings.triton_http_url, name, version, sample, expected_labels, expected_probs)
            torch_agree = float(np.mean(torch_holdout[:len(sample)].argmax(1) ==
                                        np.array([index[x] for x in expected_labels])))
            check |= {"argmax_agreement_with_torch": torch_agree,
                      "summary": f"Triton answered {check['n']} holdout texts exactly like the trainer (max |Δp| "
                                 f"{check['max_abs_prob_delta']:.1e}); argmax agreement with torch {torch_agree:.4f}"}
            report["triton_verify"] = check
            console.print(f"triton: {name} version {version} loaded and verified ({check['summary']})")
        except Exception:
            _withdraw(settings, name, version)
            raise
    t = _phase(timings, "triton_s", t)

    card = model_card.write_model_card(run_dir, report, curve, calibrate.reliability_bins(conf_before, correct,
                                       settings.ece_bins), calibrate.reliability_bins(conf_after, correct,
                                       settings.ece_bins), classes, evaluate.confusion_matrix(classes, holdout.label, predicted))
    for file in ("model_card.md", *model_card.PLOTS):
        shutil.copyfile(run_dir / file, version_dir / file)
    _phase(timings, "model_card_s", t)
    (run_dir / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    metrics_extra = {"out_of_scope": report["out_of_scope"], "paired_at_threshold": gate_view["paired_at_threshold"],
                     "kept_agreement": gate_view["kept_agreement"], "gate_basis": basis}
    metrics = metrics_extra | {k: report[k] for k in ("holdout", "parity", "quantization", "curve", "export", "timings",
                                       "threshold_reviewed_only", "threshold",
                                       "train_size", "validation_size", "frontier_source", "run_id")
               if k in report} | {"triton_verify": report.get("triton_verify"), "run_dir": str(run_dir)}
    event = model_registered(
        task=task, version=version, base_model=str(base_model), snapshot_id=data.snapshot_id,
        holdout=_published_holdout(holdout_report, basis), threshold=published.as_dict(), ece_before=ece_before, ece_after=ece_after, temperature=temperature,
        labels=labels, metrics=metrics, artifact_uri=version_dir.resolve().as_uri(),
        model_card_uri=card.resolve().as_uri(), triton_model=name)
    return TrainRun(report, event, run_dir, version, version_dir, card)


def train_for_kind(kind: str):
    """The run for a task kind: `train_task` (classification) or the extraction run (BIO token tags)."""
    if kind == "classification":
        return train_task
    if kind == "extraction":
        from trainer.extraction.pipeline import train_extraction_task

        return train_extraction_task
    raise TrainingRefused(f"a {kind} task is not trained")


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


def _out_of_scope_view(label: Optional[str], classes: list[str], labels: list[str], holdout: snap.Split,
                       confidence: np.ndarray, threshold: Optional[float]) -> dict[str, Any]:
    """How the model treats the holdout's out-of-scope inputs (gold = the out-of-scope label)."""
    is_oos = np.array([x == label for x in holdout.label], dtype=bool) if label else np.zeros(len(holdout), bool)
    return {"label": label, "class_trained": len(classes) > len(labels), "holdout_items": int(is_oos.sum()),
            "served_share": scope.served_share(confidence, is_oos, threshold)}


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

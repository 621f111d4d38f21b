"""One extraction training run, end to end: snapshot -> served, verified model version + its evidence.

The classification run's shape (trainer.pipeline), with token classification inside: align the
JSON labels to BIO tags, fine-tune, export ONNX, check parity on every holdout token, fit a
token temperature so the request confidence predicts request correctness on the validation
slice, evaluate per field and per request, choose the threshold on
request-level correctness (the request's confidence is its least confident field), serve in
Triton, check Triton answers like the trainer, and build ModelRegistered (the same contract:
accuracy figures are request-level exact match, macro_f1 the mean per-field span-F1, labels the
field names, metrics_json holds the per-field figures, per-field paired tables on the gate's
basis (`per_field_paired`: the small model everywhere; `per_field_paired_at_threshold`: the
served answer, which the offline gate tests per field), and per-field thresholds for the record).
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
from rich.console import Console

from services.common.tasks import TaskSpec, load_tasks
from trainer import calibrate, export, snapshot as snap, triton_repo
from trainer.evaluate import paired_counts
from trainer.extraction import evaluate as ev
from trainer.extraction.dataset import encode_tagged, tag_names
from trainer.extraction.serve import (EXTRACTION_FILES, EXTRACTION_OUTPUTS, MODEL_PY, extraction_model_card,
                                      verify_extraction)
from trainer.pipeline import (TrainingRefused, TrainRun, _gate_view, _phase, _published_holdout, _withdraw,
                              sample_curve)
from trainer.publish import model_registered
from trainer.settings import TrainerSettings


def select_extraction_rows(data: snap.Snapshot, settings: TrainerSettings) -> tuple[snap.Split, snap.Split]:
    train, holdout = data.train, data.holdout
    if settings.max_examples and len(train) > settings.max_examples:
        rng = np.random.default_rng(settings.seed)
        train = train.take(sorted(rng.choice(len(train), settings.max_examples, replace=False).tolist()))
    return train, holdout


def parity_tokens(torch_logits: list[np.ndarray], onnx_logits: list[np.ndarray], settings: TrainerSettings) -> dict:
    ref, cand = np.concatenate(torch_logits), np.concatenate(onnx_logits)
    return export.parity(ref, cand, settings.parity_max_logit_delta, settings.parity_min_agreement)


def train_extraction_task(settings: TrainerSettings, task: str, snapshot_ref: str = "latest",
                          console: Optional[Console] = None, spec: Optional[TaskSpec] = None) -> TrainRun:
    """Train, export, calibrate, evaluate and serve one version of extraction task `task`."""
    from transformers import AutoTokenizer

    from trainer.extraction.finetune import finetune_tokens, predict_token_logits
    from trainer.extraction.triton_model import TextExtractor
    from trainer.finetune import carve_validation, default_base_model, pick_device
    from trainer.recipe import choose_recipe

    console = console or Console(stderr=True)
    spec = spec or load_tasks(settings.tasks_file).get(task)
    if spec.kind != "extraction":
        raise TrainingRefused(f"task {task} is {spec.kind}, not extraction")
    fields = [f.name for f in spec.fields]
    tags = tag_names(fields)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    data = snap.load_snapshot(snap.resolve_snapshot(settings.datasets_dir, task, snapshot_ref))
    if data.task != task:
        raise snap.SnapshotError(f"snapshot {data.path} is of task {data.task!r}, not {task!r}")
    train_all, holdout = select_extraction_rows(data, settings)
    fit_rows, val_rows = carve_validation(len(train_all), settings.validation_fraction, settings.seed)
    train, val = train_all.take(fit_rows), train_all.take(val_rows)
    base_model = settings.base_model or default_base_model()
    tokenizer = AutoTokenizer.from_pretrained(str(base_model), use_fast=True)
    recipe = choose_recipe(settings, n_train=len(train), n_labels=len(tags), kind="extraction",
                           token_lengths=[len(x) for x in tokenizer(list(train.input))["input_ids"]],
                           device=pick_device(settings.device).type)
    enc_train = encode_tagged(tokenizer, train.input, train.label, fields, recipe.max_length)
    enc_val = encode_tagged(tokenizer, val.input, val.label, fields, recipe.max_length)
    console.print(f"snapshot [bold]{data.snapshot_id}[/bold]: {len(enc_train.rows)} train, {len(enc_val.rows)} "
                  f"validation ({enc_train.stats.unalignable + enc_val.stats.unalignable} left out: a value not in "
                  f"the input), {len(holdout)} holdout ({sum(holdout.reviewed)} reviewed), fields {', '.join(fields)}")
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    name = settings.model_name_for(task)
    run_dir = settings.runs_dir / name / run_id
    run_dir.mkdir(parents=True)
    t = _phase(timings, "snapshot_s", t)

    tuned = finetune_tokens(enc_train.ids, enc_train.tags, enc_val.ids, enc_val.tags, tags, recipe=recipe,
                            base_model=base_model, seed=settings.seed, device=settings.device,
                            threads=settings.threads, console=console)
    hf_dir = tuned.save(run_dir / "hf")
    t = _phase(timings, "finetune_s", t)

    holdout_ids = tuned.tokenizer(holdout.input, truncation=True, max_length=recipe.max_length)["input_ids"]
    torch_holdout = predict_token_logits(tuned.model, holdout_ids, tuned.tokenizer.pad_token_id, tuned.device)
    exported = export.export_onnx(hf_dir, run_dir / "onnx" / "model.onnx", settings.exporter, "token-classification")
    stage = run_dir / "version"
    meta = {"task": task, "kind": "extraction", "fields": fields, "triton_model": name, "base_model": str(base_model),
            "snapshot_id": data.snapshot_id, "max_length": recipe.max_length, "run_id": run_id,
            "created_at": datetime.now(timezone.utc).isoformat()}
    triton_repo.stage_version(stage, exported.path, tuned.tokenizer, tags, 1.0, meta | {"onnx": "fp32"}, MODEL_PY)
    (stage / "fields.json").write_text(json.dumps(fields, indent=1) + "\n")
    fp32 = TextExtractor(stage, threads=settings.threads or 0)
    onnx_tokens = fp32.token_logits(holdout.input)
    parity = parity_tokens(torch_holdout, [x[0] for x in onnx_tokens], settings)
    console.print(f"export ({exported.exporter}, {exported.seconds:.1f} s): max |Δlogit| "
                  f"{parity['max_abs_logit_delta']:.2e}, token argmax agreement {parity['argmax_agreement']:.4f}")
    if not parity["ok"]:
        raise TrainingRefused(f"ONNX export does not match torch on the holdout tokens: {parity}")
    t = _phase(timings, "export_s", t)

    served, quant = fp32, {"tried": settings.quantize, "kept": False}
    if settings.quantize:
        served, quant = _try_int8(settings, run_dir, stage, fp32, holdout, fields)
    console.print(f"int8: {quant.get('summary', 'not tried')}")
    t = _phase(timings, "quantize_s", t)

    temperature = fit_request_temperature(served, [val.input[i] for i in enc_val.rows],
                                          [val.label[i] for i in enc_val.rows], fields)
    predicted, confidence, field_conf = served.extract(holdout.input, temperature)
    _, confidence_before, _ = served.extract(holdout.input, 1.0)

    report_holdout = ev.evaluate_extraction_holdout(fields, holdout.label, holdout.frontier_label, holdout.reviewed,
                                                    predicted)
    gold_v = [ev.values_of(x, fields) for x in holdout.label]
    pred_v = [ev.values_of(x, fields) for x in predicted]
    front_v = [ev.values_of(x, fields) for x in holdout.frontier_label]
    correct = ev.request_correct(gold_v, pred_v)
    frontier_ok = ev.request_correct(gold_v, front_v)
    ece_before = calibrate.expected_calibration_error(confidence_before, correct, settings.ece_bins)
    ece_after = calibrate.expected_calibration_error(confidence, correct, settings.ece_bins)
    target = settings.target_accuracy or report_holdout["frontier_accuracy"]
    curve = calibrate.coverage_accuracy_curve(confidence, correct)
    choice = calibrate.choose_threshold(confidence, correct, target, settings.min_kept)
    reviewed = np.array(holdout.reviewed, dtype=bool)
    choice_reviewed = calibrate.choose_threshold(
        confidence[reviewed], correct[reviewed],
        settings.target_accuracy or report_holdout["reviewed_only"]["frontier_accuracy"], settings.min_kept)
    basis = settings.gate_basis
    if basis == "auto":
        basis = "reviewed" if int(reviewed.sum()) >= settings.min_reviewed_gold else "all"
    on = reviewed if basis == "reviewed" else np.ones(len(correct), dtype=bool)
    published = choice_reviewed if basis == "reviewed" else choice
    canonical_pred = [json.dumps(v, sort_keys=True) for v in pred_v]
    canonical_front = [json.dumps(v, sort_keys=True) for v in front_v]
    gate_view = _gate_view(confidence, correct, frontier_ok, canonical_pred, canonical_front, on, published.threshold)
    gate_view["basis"] = basis
    field_thresholds = _field_thresholds(fields, field_conf, gold_v, pred_v, front_v, on, settings.min_kept)
    field_paired = {name: paired_counts(ev.field_correct(gold_v, pred_v, name)[on],
                                        ev.field_correct(gold_v, front_v, name)[on]).model_dump() for name in fields}
    field_paired_served = served_field_paired(fields, gold_v, pred_v, front_v, confidence, on, published.threshold)
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
                                                       gpu=settings.device == "cuda", files=EXTRACTION_FILES,
                                                       outputs=EXTRACTION_OUTPUTS)
    report: dict[str, Any] = {
        "task": task, "kind": "extraction", "version": version, "triton_model": name, "run_id": run_id,
        "snapshot_id": data.snapshot_id, "base_model": str(base_model), "device": tuned.device, "fields": fields,
        "tags": tags, "train_size": len(enc_train.rows), "validation_size": len(enc_val.rows),
        "alignment": {"train": enc_train.stats.as_dict(), "validation": enc_val.stats.as_dict()},
        "holdout": report_holdout,
        "frontier_source": data.manifest.get("source", {}).get("frontier", {}).get(
            "kind", "the frontier answers captured by the curator"),
        "temperature": temperature, "ece_before": ece_before, "ece_after": ece_after,
        "threshold": choice.as_dict(), "threshold_reviewed_only": choice_reviewed.as_dict(),
        "field_thresholds": field_thresholds, "per_field_paired": field_paired,
        "per_field_paired_at_threshold": field_paired_served, "gate": gate_view, "curve": sample_curve(curve),
        "export": {"exporter": exported.exporter, "seconds": exported.seconds,
                   "fallback_reason": exported.fallback_reason},
        "parity": parity, "quantization": quant, "served_onnx": "int8" if quant["kept"] else "fp32",
        "finetune": tuned.summary() | {"seed": settings.seed},
        "timings": timings,
    }
    console.print(_summary_line(report_holdout, temperature, ece_before, ece_after, choice))

    if settings.load:
        try:
            report["timings"]["triton_load_s"] = triton_repo.load_model(
                settings.triton_http_url, name, version, settings.triton_timeout_s)
            sample = holdout.input[:settings.verify_examples]
            check = verify_extraction(settings.triton_http_url, name, version, sample,
                                      *TextExtractor(version_dir).extract(sample))
            report["triton_verify"] = check
            console.print(f"triton: {name} version {version} loaded and verified ({check['summary']})")
        except Exception:
            _withdraw(settings, name, version)
            raise
    t = _phase(timings, "triton_s", t)

    card = extraction_model_card(run_dir, report, curve, calibrate.reliability_bins(confidence_before, correct,
                                 settings.ece_bins), calibrate.reliability_bins(confidence, correct, settings.ece_bins))
    for file in run_dir.glob("*.png"):
        shutil.copyfile(file, version_dir / file.name)
    shutil.copyfile(card, version_dir / card.name)
    _phase(timings, "model_card_s", t)
    (run_dir / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    metrics = {"kind": "extraction", "fields": fields, "paired_at_threshold": gate_view["paired_at_threshold"],
               "kept_agreement": gate_view["kept_agreement"], "gate_basis": basis,
               "per_field": report_holdout["per_field"], "field_thresholds": field_thresholds,
               "per_field_paired": field_paired, "per_field_paired_at_threshold": field_paired_served,
               "request_level": "accuracy = every field equal to the gold (exact match)"} | {
        k: report[k] for k in ("holdout", "parity", "quantization", "curve", "export", "timings", "alignment",
                               "threshold_reviewed_only", "threshold", "train_size", "validation_size",
                               "frontier_source", "run_id")} | {"triton_verify": report.get("triton_verify"),
                                                                 "run_dir": str(run_dir)}
    event = model_registered(
        task=task, version=version, base_model=str(base_model), snapshot_id=data.snapshot_id,
        holdout=_published_holdout(report_holdout, basis), threshold=published.as_dict(), ece_before=ece_before,
        ece_after=ece_after, temperature=temperature, labels=fields, metrics=metrics,
        artifact_uri=version_dir.resolve().as_uri(), model_card_uri=(version_dir / card.name).resolve().as_uri(),
        triton_model=name)
    return TrainRun(report, event, run_dir, version, version_dir, card)


def fit_request_temperature(served, texts: list[str], labels: list[str], fields: list[str],
                            iterations: int = 30) -> float:
    """The token temperature T that makes the request confidence (its least confident field) best
    predict request-level exact match on the validation slice: minimum binary log-loss, by
    golden-section search over log T. Temperature does not move a token's argmax, so it changes
    the confidences, not the answers (and the threshold is then chosen on the holdout curve)."""
    from trainer.extraction.triton_model import decode_fields, softmax

    tokens = []
    for text, (logits, offsets, special) in zip(texts, served.token_logits(texts)):
        real = [t for t, (s, e) in enumerate(offsets) if not special[t] and e > s]
        tokens.append((text, logits[real], [offsets[t] for t in real]))
    gold = [ev.values_of(x, fields) for x in labels]

    def log_loss(log_t: float) -> float:
        t = float(np.exp(log_t))
        conf, ok = [], []
        for (text, logits, offsets), g in zip(tokens, gold):
            values, field_conf = decode_fields(text, softmax(logits, t), offsets, fields)
            conf.append(float(field_conf.min()) if len(field_conf) else 1.0)
            ok.append({f: ev.normalise_value(v) for f, v in values.items()} == g)
        p = np.clip(np.array(conf), 1e-6, 1 - 1e-6)
        y = np.array(ok, dtype=np.float64)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    if not tokens:
        return 1.0
    ratio = (np.sqrt(5.0) - 1) / 2
    lo, hi = np.log(calibrate.MIN_TEMPERATURE), np.log(calibrate.MAX_TEMPERATURE)
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = log_loss(a), log_loss(b)
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = log_loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = log_loss(b)
    return float(np.exp((lo + hi) / 2))


def _try_int8(settings: TrainerSettings, run_dir: Path, stage: Path, fp32, holdout: snap.Split,
              fields: list[str]) -> tuple[Any, dict[str, Any]]:
    """Dynamic int8, kept when request-level exact match on the holdout drops by at most the bound."""
    from trainer.extraction.triton_model import TextExtractor

    int8_path = export.quantize_int8(stage / "model.onnx", run_dir / "onnx" / "model.int8.onnx")
    shutil.copyfile(int8_path, stage / "model.int8.onnx")
    int8 = TextExtractor(stage, onnx_file="model.int8.onnx", threads=settings.threads or 0)
    gold = [ev.values_of(x, fields) for x in holdout.label]
    exact = {}
    for label, model in (("fp32", fp32), ("int8", int8)):
        predicted, _, _ = model.extract(holdout.input)
        exact[label] = float(ev.request_correct(gold, [ev.values_of(x, fields) for x in predicted]).mean())
    drop = exact["fp32"] - exact["int8"]
    kept = drop <= settings.int8_max_accuracy_drop
    (stage / "model.int8.onnx").unlink()
    quant = {"tried": True, "kept": kept, "accuracy_fp32": exact["fp32"], "accuracy_int8": exact["int8"],
             "accuracy_drop": drop, "max_drop": settings.int8_max_accuracy_drop,
             "summary": f"{'kept' if kept else 'rejected'} — holdout exact match {exact['int8']:.4f} vs fp32 "
                        f"{exact['fp32']:.4f} (drop {drop:+.4f}, bound {settings.int8_max_accuracy_drop:.4f})"}
    return (int8 if kept else fp32), quant


def served_field_paired(fields: list[str], gold: list, predicted: list, frontier: list, confidence: np.ndarray,
                        on: np.ndarray, threshold: Optional[float]) -> dict[str, dict[str, int]]:
    """Per field, the paired table of what a task in `small` serves (the small model's value when
    the request's confidence is at or above the threshold, the frontier's below it) against the
    frontier alone, on the gate's basis: the per-field counterpart of `paired_at_threshold`, which
    the offline gate tests field by field."""
    kept = confidence >= threshold if threshold is not None else np.zeros(len(confidence), dtype=bool)
    out = {}
    for name in fields:
        small_ok, frontier_ok = ev.field_correct(gold, predicted, name), ev.field_correct(gold, frontier, name)
        served_ok = np.where(kept, small_ok, frontier_ok)
        out[name] = paired_counts(served_ok[on], frontier_ok[on]).model_dump()
    return out


def _field_thresholds(fields: list[str], field_conf: np.ndarray, gold: list, predicted: list, frontier: list,
                      on: np.ndarray, min_kept: int) -> dict[str, Any]:
    """Per field, for the record: the lowest threshold at which the field alone matches the frontier's
    exact match on it. The router applies one threshold to the request (its least confident field)."""
    out = {}
    for k, name in enumerate(fields):
        ok = ev.field_correct(gold, predicted, name)[on]
        target = float(ev.field_correct(gold, frontier, name)[on].mean()) if on.any() else 1.0
        out[name] = calibrate.choose_threshold(field_conf[on, k], ok, target, min_kept).as_dict()
    return out


def _summary_line(h: dict, temperature: float, ece_before: float, ece_after: float, choice) -> str:
    fields = ", ".join(f"{name} {v['small']['span_f1']:.3f}/{v['frontier']['span_f1']:.3f}"
                       for name, v in h["per_field"].items())
    return (f"holdout: request exact match small {h['small_accuracy']:.4f}, frontier {h['frontier_accuracy']:.4f} "
            f"(gold: {h['gold_reviewed']} reviewed, {h['gold_frontier']} frontier); span-F1 small/frontier: {fields}; "
            f"T={temperature:.3f}, ECE {ece_before:.4f} -> {ece_after:.4f}; threshold {choice.threshold} "
            f"coverage {choice.coverage:.3f}")

"""Extraction: token classification (BIO tags per field) over the task's fields.

Align the JSON labels to BIO tags, fine-tune, check parity on every holdout token, fit a token
temperature so the request confidence (its least confident field) predicts request-level exact
match on the validation slice, evaluate per field and per request. What ModelRegistered carries
is the classification contract: accuracy figures are request-level exact match, macro_f1 the
mean per-field span-F1, labels the field names; metrics_json adds the per-field figures and the
per-field paired tables on the gate's basis (`per_field_paired`: the small model everywhere;
`per_field_paired_at_threshold`: the served answer), and the threshold search runs on the
request and on every field (each field is one of its checks).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np

from services.common.tasks import TaskSpec
from trainer import calibrate, export, snapshot as snap, triton_repo
from trainer.evaluate import paired_counts
from trainer.extraction import evaluate as ev
from trainer.extraction.dataset import encode_tagged, tag_names
from trainer.extraction.serve import (EXTRACTION_FILES, EXTRACTION_OUTPUTS, MODEL_PY, extraction_model_card,
                                      verify_extraction)
from trainer.kinds import Evaluation, TrainingRefused
from trainer.settings import TrainerSettings
from trainer.threshold import REQUEST


def select_extraction_rows(data: snap.Snapshot, settings: TrainerSettings) -> tuple[snap.Split, snap.Split]:
    train, holdout = data.train, data.holdout
    if settings.max_examples and len(train) > settings.max_examples:
        rng = np.random.default_rng(settings.seed)
        train = train.take(sorted(rng.choice(len(train), settings.max_examples, replace=False).tolist()))
    return train, holdout


def parity_tokens(torch_logits: list[np.ndarray], onnx_logits: list[np.ndarray], settings: TrainerSettings) -> dict:
    ref, cand = np.concatenate(torch_logits), np.concatenate(onnx_logits)
    return export.parity(ref, cand, settings.parity_max_logit_delta, settings.parity_min_agreement)


class Extraction:
    name = "extraction"
    export_task = "token-classification"
    install_args: dict[str, Any] = {"files": EXTRACTION_FILES, "outputs": EXTRACTION_OUTPUTS}

    def __init__(self, spec: TaskSpec) -> None:
        if spec.kind != "extraction":
            raise TrainingRefused(f"task {spec.name} is {spec.kind}, not extraction")
        self.fields = [f.name for f in spec.fields]
        self.tags = tag_names(self.fields)
        self.labels = self.fields  # what ModelRegistered.labels carries
        self.enc_train = self.enc_val = None

    def select(self, data: snap.Snapshot, settings: TrainerSettings) -> tuple[snap.Split, snap.Split]:
        return select_extraction_rows(data, settings)

    def plan(self, settings: TrainerSettings, base_model: Path, train: snap.Split):
        from transformers import AutoTokenizer

        from trainer.finetune import pick_device
        from trainer.recipe import choose_recipe

        self.tokenizer = AutoTokenizer.from_pretrained(str(base_model), use_fast=True)
        self.recipe = choose_recipe(settings, n_train=len(train), n_labels=len(self.tags), kind="extraction",
                                    token_lengths=[len(x) for x in self.tokenizer(list(train.input))["input_ids"]],
                                    device=pick_device(settings.device).type)
        return self.recipe

    def describe(self, settings: TrainerSettings, base_model: Path, train: snap.Split, val: snap.Split,
                 holdout: snap.Split) -> str:
        max_length = self.recipe.max_length
        self.enc_train = encode_tagged(self.tokenizer, train.input, train.label, self.fields, max_length)
        self.enc_val = encode_tagged(self.tokenizer, val.input, val.label, self.fields, max_length)
        left_out = self.enc_train.stats.unalignable + self.enc_val.stats.unalignable
        return (f"{len(self.enc_train.rows)} train, {len(self.enc_val.rows)} validation ({left_out} left out: a "
                f"value not in the input), {len(holdout)} holdout ({sum(holdout.reviewed)} reviewed), fields "
                f"{', '.join(self.fields)}")

    def sizes(self, train: snap.Split, val: snap.Split) -> tuple[int, int]:
        return len(self.enc_train.rows), len(self.enc_val.rows)

    def finetune(self, settings: TrainerSettings, base_model: Path, train: snap.Split, val: snap.Split, console):
        from trainer.extraction.finetune import finetune_tokens

        return finetune_tokens(self.enc_train.ids, self.enc_train.tags, self.enc_val.ids, self.enc_val.tags, self.tags,
                               recipe=self.recipe, base_model=base_model, seed=settings.seed, device=settings.device,
                               threads=settings.threads, console=console)

    def torch_logits(self, settings: TrainerSettings, tuned, holdout: snap.Split) -> list[np.ndarray]:
        from trainer.extraction.finetune import predict_token_logits

        ids = tuned.tokenizer(holdout.input, truncation=True, max_length=self.recipe.max_length)["input_ids"]
        return predict_token_logits(tuned.model, ids, tuned.tokenizer.pad_token_id, tuned.device)

    def disputes(self, settings: TrainerSettings, tuned, train: snap.Split) -> None:
        """Disputed train labels are listed for classification only (a span tagger's disagreement with
        a row is per field and token: not measured, so not listed)."""
        return None

    def meta(self) -> dict[str, Any]:
        return {"kind": "extraction", "fields": self.fields}

    def stage(self, settings: TrainerSettings, stage: Path, onnx_file: Path, tokenizer, meta: dict[str, Any]):
        from trainer.extraction.triton_model import TextExtractor

        triton_repo.stage_version(stage, onnx_file, tokenizer, self.tags, 1.0, meta, MODEL_PY)
        (stage / "fields.json").write_text(json.dumps(self.fields, indent=1) + "\n")
        return TextExtractor(stage, threads=settings.threads or 0)

    def parity(self, settings: TrainerSettings, torch_holdout: list[np.ndarray], fp32, holdout: snap.Split) -> dict:
        return parity_tokens(torch_holdout, [x[0] for x in fp32.token_logits(holdout.input)], settings)

    def quantize(self, settings: TrainerSettings, run_dir: Path, stage: Path, fp32,
                 holdout: snap.Split) -> tuple[Any, dict[str, Any]]:
        """Dynamic int8, kept when request-level exact match on the holdout drops by at most the bound."""
        from trainer.extraction.triton_model import TextExtractor

        int8_path = export.quantize_int8(stage / "model.onnx", run_dir / "onnx" / "model.int8.onnx")
        shutil.copyfile(int8_path, stage / "model.int8.onnx")
        int8 = TextExtractor(stage, onnx_file="model.int8.onnx", threads=settings.threads or 0)
        gold = [ev.values_of(x, self.fields) for x in holdout.label]
        exact = {}
        for label, model in (("fp32", fp32), ("int8", int8)):
            predicted, _, _ = model.extract(holdout.input)
            exact[label] = float(ev.request_correct(gold, [ev.values_of(x, self.fields) for x in predicted]).mean())
        drop = exact["fp32"] - exact["int8"]
        kept = drop <= settings.int8_max_accuracy_drop
        (stage / "model.int8.onnx").unlink()
        quant = {"tried": True, "kept": kept, "accuracy_fp32": exact["fp32"], "accuracy_int8": exact["int8"],
                 "accuracy_drop": drop, "max_drop": settings.int8_max_accuracy_drop,
                 "summary": f"{'kept' if kept else 'rejected'} — holdout exact match {exact['int8']:.4f} vs fp32 "
                            f"{exact['fp32']:.4f} (drop {drop:+.4f}, bound {settings.int8_max_accuracy_drop:.4f})"}
        return (int8 if kept else fp32), quant

    def fit_temperature(self, served, val: snap.Split) -> tuple[float, float]:
        """(the token temperature, the served model's request exact match on the validation slice)."""
        texts = [val.input[i] for i in self.enc_val.rows]
        labels = [val.label[i] for i in self.enc_val.rows]
        temperature = fit_request_temperature(served, texts, labels, self.fields)
        predicted, _, _ = served.extract(texts, temperature) if texts else ([], None, None)
        gold = [ev.values_of(x, self.fields) for x in labels]
        ok = ev.request_correct(gold, [ev.values_of(x, self.fields) for x in predicted])
        return temperature, float(ok.mean()) if len(ok) else 0.0

    def evaluate(self, settings: TrainerSettings, served, holdout: snap.Split, temperature: float) -> Evaluation:
        predicted, confidence, self._field_conf = served.extract(holdout.input, temperature)
        _, confidence_before, _ = served.extract(holdout.input, 1.0)
        report = ev.evaluate_extraction_holdout(self.fields, holdout.label, holdout.frontier_label, holdout.reviewed,
                                                predicted)
        self._gold = [ev.values_of(x, self.fields) for x in holdout.label]
        self._pred = [ev.values_of(x, self.fields) for x in predicted]
        self._front = [ev.values_of(x, self.fields) for x in holdout.frontier_label]
        small_ok, frontier_ok = ev.request_correct(self._gold, self._pred), ev.request_correct(self._gold, self._front)
        checks = {REQUEST: (small_ok, frontier_ok)} | {
            f"field:{name}": (ev.field_correct(self._gold, self._pred, name),
                              ev.field_correct(self._gold, self._front, name)) for name in self.fields}
        return Evaluation(report, np.asarray(confidence), np.asarray(confidence_before), small_ok, frontier_ok,
                          [json.dumps(v, sort_keys=True) for v in self._pred],
                          [json.dumps(v, sort_keys=True) for v in self._front], checks)

    def gate_extras(self, evaluation: Evaluation, on: np.ndarray, threshold: Optional[float],
                    settings: TrainerSettings) -> dict[str, Any]:
        gold, pred, front = self._gold, self._pred, self._front
        return {
            "field_thresholds": _field_thresholds(self.fields, self._field_conf, gold, pred, front, on,
                                                  settings.min_kept),
            "per_field_paired": {name: paired_counts(ev.field_correct(gold, pred, name)[on],
                                                     ev.field_correct(gold, front, name)[on]).model_dump()
                                 for name in self.fields},
            "per_field_paired_at_threshold": served_field_paired(self.fields, gold, pred, front, evaluation.confidence,
                                                                 on, threshold)}

    def verify(self, settings: TrainerSettings, name: str, version: int, version_dir: Path, sample: list[str],
               torch_holdout) -> dict[str, Any]:
        from trainer.extraction.triton_model import TextExtractor

        extractor = TextExtractor(version_dir)
        answers = [extractor.extract([text]) for text in sample]  # one at a time, as verify_extraction asks
        return verify_extraction(settings.triton_http_url, name, version, sample,
                                 [labels[0] for labels, _, _ in answers],
                                 np.concatenate([c for _, c, _ in answers]) if answers else np.zeros(0),
                                 np.concatenate([f for _, _, f in answers]) if answers else np.zeros((0, 0)))

    def model_card(self, settings: TrainerSettings, run_dir: Path, report: dict[str, Any], curve,
                   evaluation: Evaluation, version_dir: Path) -> tuple[Path, Path]:
        bins = settings.ece_bins
        card = extraction_model_card(
            run_dir, report, curve, calibrate.reliability_bins(evaluation.confidence_before, evaluation.small_ok, bins),
            calibrate.reliability_bins(evaluation.confidence, evaluation.small_ok, bins))
        for file in run_dir.glob("*.png"):
            shutil.copyfile(file, version_dir / file.name)
        shutil.copyfile(card, version_dir / card.name)
        return card, version_dir / card.name

    def report_extras(self, threshold: Optional[float]) -> dict[str, Any]:
        return {"kind": "extraction", "fields": self.fields, "tags": self.tags,
                "alignment": {"train": self.enc_train.stats.as_dict(), "validation": self.enc_val.stats.as_dict()}}

    def metrics_extras(self, report: dict[str, Any]) -> dict[str, Any]:
        g = report["gate"]
        return {"kind": "extraction", "fields": self.fields, "per_field": report["holdout"]["per_field"],
                "field_thresholds": g["field_thresholds"], "per_field_paired": g["per_field_paired"],
                "per_field_paired_at_threshold": g["per_field_paired_at_threshold"],
                "alignment": report["alignment"],
                "request_level": "accuracy = every field equal to the gold (exact match)"}


def fit_request_temperature(served, texts: list[str], labels: list[str], fields: list[str],
                            iterations: int = 30) -> float:
    """The token temperature T that makes the request confidence (its least confident field) best
    predict request-level exact match on the validation slice: minimum binary log-loss, by
    golden-section search over log T. Temperature does not move a token's argmax, so it changes
    the confidences, not the answers (and the threshold is then chosen on the holdout)."""
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

"""The extraction model's side of the Triton repository: its files, its outputs, the check that
Triton answers like the trainer, and its model card.

Version folder: model.py (trainer/extraction/triton_model.py), model.onnx, tokenizer.json,
labels.json (the BIO tags), fields.json, calibration.json, version.json. Outputs: LABEL,
CONFIDENCE (the least confident field) and FIELD_CONFIDENCE (one per field, fields.json order).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trainer.calibrate import CoverageCurve, ReliabilityBin
from trainer.triton_repo import MAX_BATCH_SIZE, VERIFY_BATCH, TritonError, infer_texts

MODEL_PY = Path(__file__).with_name("triton_model.py")
EXTRACTION_FILES = ("model.py", "model.onnx", "tokenizer.json", "labels.json", "fields.json", "calibration.json",
                    "version.json")
EXTRACTION_OUTPUTS = (("LABEL", "TYPE_STRING", "1"), ("CONFIDENCE", "TYPE_FP32", "1"),
                      ("FIELD_CONFIDENCE", "TYPE_FP32", "-1"))


def extract(url: str, name: str, version: int | str | None, texts: list[str],
            batch: int = MAX_BATCH_SIZE) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Triton's (JSON labels, confidences [n], field confidences [n, n_fields]), `batch` texts a request."""
    return infer_texts(url, name, version, texts, "FIELD_CONFIDENCE", batch)


def verify_extraction(url: str, name: str, version: int, texts: list[str], expected_labels: list[str],
                      expected_confidence: np.ndarray, expected_fields: np.ndarray, atol: float = 1e-4) -> dict[str, Any]:
    """Triton must answer like the trainer's in-process run of the same version folder (both one text
    at a time: triton_repo.VERIFY_BATCH)."""
    labels, confidences, fields = extract(url, name, version, texts, VERIFY_BATCH)
    agreement = float(np.mean([a == b for a, b in zip(labels, expected_labels)]))
    delta = float(np.max(np.abs(fields - expected_fields))) if len(texts) else 0.0
    report = {"n": len(texts), "label_agreement": agreement, "max_abs_field_confidence_delta": delta,
              "confidence_is_min_field": bool(np.allclose(confidences, fields.min(axis=1), atol=1e-6)),
              "max_abs_confidence_delta": float(np.max(np.abs(confidences - expected_confidence))) if len(texts) else 0.0}
    if agreement < 1.0 or delta > atol or not report["confidence_is_min_field"]:
        raise TritonError(f"{name} version {version} answers differently from the trainer: {report}")
    report["summary"] = (f"Triton answered {len(texts)} holdout texts exactly like the trainer (same JSON, "
                         f"max |Δ field confidence| {delta:.1e})")
    return report


def extraction_model_card(run_dir: Path, report: dict[str, Any], curve: CoverageCurve,
                          before: list[ReliabilityBin], after: list[ReliabilityBin]) -> Path:
    """model_card.md with the per-field table, plus the coverage and reliability plots."""
    from trainer.model_card import plot_coverage_accuracy, plot_reliability

    h, threshold = report["holdout"], report["threshold"]
    plot_coverage_accuracy(run_dir / "coverage_accuracy.png", curve, threshold["frontier_accuracy"],
                           threshold["threshold"])
    plot_reliability(run_dir / "reliability.png", before, after, report["ece_before"], report["ece_after"])
    rows = [f"| {name} | {v['small']['span_f1']:.3f} | {v['frontier']['span_f1']:.3f} | {v['small']['exact_match']:.3f} "
            f"| {v['frontier']['exact_match']:.3f} | {v['null_baseline_exact_match']:.3f} | {v['small']['support']} |"
            for name, v in h["per_field"].items()]
    ro = h["reviewed_only"]
    lines = [
        f"# {report['task']} — version {report['version']} (extraction)", "",
        f"Base model `{report['base_model']}`, snapshot `{report['snapshot_id']}`, {report['train_size']} train / "
        f"{report['validation_size']} validation examples. Frontier labels: {report['frontier_source']}.", "",
        "## Holdout", "",
        f"{h['n']} items; gold: {h['gold_reviewed']} reviewed, {h['gold_frontier']} the frontier's own answer "
        "(where the frontier is right by construction, so the reviewed slice is the fair comparison).", "",
        "| field | span-F1 small | span-F1 frontier | exact match small | exact match frontier | "
        "always-null exact match | gold values |",
        "|---|---|---|---|---|---|---|", *rows, "",
        f"Request-level exact match: small {h['small_accuracy']:.4f}, frontier {h['frontier_accuracy']:.4f}, agreement "
        f"{h['agreement']:.4f}; on the {ro['n']} reviewed items: small {ro['small_accuracy']:.4f}, frontier "
        f"{ro['frontier_accuracy']:.4f}.", "",
        "## Confidence and threshold", "",
        f"A field's confidence is its least sure token decision; the request's is its least confident field. "
        f"Temperature {report['temperature']:.3f} (ECE {report['ece_before']:.4f} -> {report['ece_after']:.4f}). "
        f"Threshold {threshold['threshold']} keeps {threshold['coverage']:.1%} of requests at exact match "
        f"{threshold['kept_accuracy']:.4f}; served (small at or above it, frontier below) {threshold['served_accuracy']:.4f} "
        f"vs the frontier's {threshold['frontier_accuracy']:.4f} on the gate basis ({report['gate']['basis']}), "
        f"the lowest candidate threshold whose served answers pass the gate's test on the request and every field "
        f"(fixed-sequence search).", "",
        "![coverage](coverage_accuracy.png) ![reliability](reliability.png)", "",
        f"Export: {report['export']['exporter']}, parity max |Δlogit| {report['parity']['max_abs_logit_delta']:.2e}; "
        f"served ONNX {report['served_onnx']}.",
    ]
    card = run_dir / "model_card.md"
    card.write_text("\n".join(lines) + "\n")
    return card

"""ONNX export (optimum, fallback torch.onnx.export), the parity check, and optional int8.

The exported graph takes input_ids, attention_mask and token_type_ids with dynamic batch and
sequence axes and returns logits ([batch, labels], or [batch, sequence, tags] for the token
classification of extraction tasks). Parity is measured on the holdout against the torch model;
int8 (onnxruntime dynamic quantisation) is kept only within a configured accuracy drop.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

OPSET = 18


@dataclass(frozen=True)
class Exported:
    path: Path
    exporter: str
    seconds: float
    fallback_reason: Optional[str] = None


HEADS = {"text-classification": "AutoModelForSequenceClassification",
         "token-classification": "AutoModelForTokenClassification"}


def export_with_optimum(hf_dir: Path, out: Path, task: str = "text-classification") -> Path:
    from optimum.exporters.onnx import main_export

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about constant masks: expected for BERT
        main_export(str(hf_dir), output=tmp, task=task, opset=OPSET, device="cpu",
                    do_validation=False)
        shutil.move(str(Path(tmp) / "model.onnx"), out)
    return out


def export_with_torch(hf_dir: Path, out: Path, task: str = "text-classification") -> Path:
    import torch
    import transformers

    from trainer.finetune import is_pooled, load_pooled

    if task == "text-classification" and is_pooled(hf_dir):
        model = load_pooled(hf_dir)
    else:
        model = getattr(transformers, HEADS[task]).from_pretrained(str(hf_dir)).eval()
    dummy = torch.ones((2, 8), dtype=torch.long)
    axes = {0: "batch_size", 1: "sequence_length"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy, dummy, torch.zeros_like(dummy)), str(out),
                          input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["logits"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                                        "logits": axes if task == "token-classification" else {0: "batch_size"}},
                          opset_version=OPSET, dynamo=False)
    return out


def export_onnx(hf_dir: Path, out: Path, exporter: str = "optimum", task: str = "text-classification") -> Exported:
    """Export to `out` (one file); optimum first unless told otherwise, torch on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    from trainer.finetune import is_pooled

    if task == "text-classification" and is_pooled(hf_dir):  # graduate's own head: optimum cannot know it
        export_with_torch(hf_dir, out, task)
        return Exported(out, "torch.onnx", time.perf_counter() - started, "mean-pooled prototype head")
    if exporter == "optimum":
        try:
            export_with_optimum(hf_dir, out, task)
            return Exported(out, "optimum", time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - any optimum failure falls back to torch
            reason = f"{type(exc).__name__}: {exc}"[:500]
            started = time.perf_counter()
            export_with_torch(hf_dir, out, task)
            return Exported(out, "torch.onnx", time.perf_counter() - started, reason)
    export_with_torch(hf_dir, out, task)
    return Exported(out, "torch.onnx", time.perf_counter() - started)


def parity(reference: np.ndarray, candidate: np.ndarray, max_delta: float, min_agreement: float) -> dict[str, Any]:
    """max |Δ logit| and argmax agreement of two logit matrices; ok when both are in bounds."""
    delta = float(np.max(np.abs(reference - candidate))) if reference.size else 0.0
    agreement = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1))) if len(reference) else 1.0
    return {"max_abs_logit_delta": delta, "argmax_agreement": agreement, "n": int(len(reference)),
            "max_delta_allowed": max_delta, "min_agreement": min_agreement,
            "ok": delta <= max_delta and agreement >= min_agreement}


def quantize_int8(fp32: Path, out: Path) -> Path:
    """Dynamic int8 weights (onnxruntime quantize_dynamic), activations quantised at run time.

    The graph is pre-processed first (shape inference + ORT graph optimisation), as onnxruntime
    recommends; if that step fails the raw graph is quantised."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        source = Path(tmp) / "preprocessed.onnx"
        try:
            quant_pre_process(str(fp32), str(source), skip_symbolic_shape=True)
        except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation only
            logging.getLogger("graduate.trainer").warning("int8 pre-processing skipped: %s", exc)
            source = fp32
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8)
    return out

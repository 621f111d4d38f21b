"""Trainer settings: the common ones (GRADUATE_*) plus the training knobs (GRADUATE_TRAIN_*).

`TrainerSettings` extends `CommonSettings`, so Kafka, the var folder, the model repository and
the Triton URLs keep their shared variable names; every field declared here reads
`GRADUATE_TRAIN_<NAME>` instead (and accepts its plain name as a keyword).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import AliasChoices, Field, field_validator

from services.common.settings import CommonSettings

Device = Literal["auto", "cpu", "cuda"]


def _knob(name: str, default: Any, description: str, **constraints: Any) -> Any:
    return Field(default, description=description,
                 validation_alias=AliasChoices(f"GRADUATE_TRAIN_{name.upper()}", name), **constraints)


class TrainerSettings(CommonSettings):
    """Everything `graduate train` and the trainer service need; frozen once built."""

    # the model and the fine-tune
    base_model: Optional[Path] = _knob("base_model", None, "local HF encoder dir; default all-MiniLM-L6-v2")
    # None = chosen from the data by trainer/recipe.py (the model card says what and why)
    epochs: Optional[int] = _knob("epochs", None, "maximum epochs (default: from the train size; early "
                                  "stopping and the time budget may end sooner)", ge=1)
    batch_size: Optional[int] = _knob("batch_size", None, "training batch size (default: from the train size)", ge=1)
    learning_rate: Optional[float] = _knob("learning_rate", None, "AdamW rate of the encoder (default 1e-4)", gt=0)
    head_learning_rate: Optional[float] = _knob("head_learning_rate", None, "AdamW rate of the head", gt=0)
    weight_decay: float = _knob("weight_decay", 0.01, "AdamW weight decay", ge=0)
    warmup_ratio: float = _knob("warmup_ratio", 0.06, "share of steps with linear warm-up", ge=0, lt=1)
    max_length: Optional[int] = _knob("max_length", None, "tokens per input (default: the train inputs' "
                                      "99th percentile; longer inputs are truncated)", ge=8)
    time_budget_s: Optional[float] = _knob("time_budget_s", 540.0, "wall-time budget of a run; the fine-tune "
                                           "re-plans its schedule to fit (0 or unset: no limit)", ge=0)
    seed: int = _knob("seed", 13, "seeds the sampler, head init, dropout and the validation carve")
    validation_fraction: float = _knob("validation_fraction", 0.1, "share of train carved off for early "
                                       "stopping and temperature fitting (never the holdout)", gt=0, lt=0.5)
    patience: Optional[int] = _knob("patience", None, "evaluations without a validation-accuracy gain before "
                                    "stopping (default 3)", ge=1)
    evals_per_epoch: Optional[int] = _knob("evals_per_epoch", None, "validation passes per epoch", ge=1)
    freeze_word_embeddings: Optional[bool] = _knob(
        "freeze_word_embeddings", None, "keep the base model's word-embedding matrix as it is (default: yes for "
        "classification: AdamW and the gradient of its 11.7 M values cost 19 % of a CPU step)")
    frozen_layers: Optional[int] = _knob(
        "frozen_layers", None, "the embeddings and this many of the lowest encoder layers stay as the base model has "
        "them (default: 2 for classification, 0 for extraction; 0 trains every layer)", ge=0)
    device: Device = _knob("device", "auto", "auto picks cuda when present")
    threads: Optional[int] = _knob("threads", None, "torch CPU threads (default: torch's choice)", ge=1)
    max_examples: Optional[int] = _knob("max_examples", None, "cap on train examples (seeded sample)", ge=1)
    labels_subset: Optional[int] = _knob("labels_subset", None, "train on the task's first K labels only", ge=2)

    # calibration and the threshold
    ece_bins: int = _knob("ece_bins", 15, "equal-width bins of the expected calibration error", ge=2)
    min_kept: int = _knob("min_kept", 20, "the per-field thresholds kept for the record must keep at least this "
                          "many holdout items (the served threshold is the gate's test's, trainer.threshold)", ge=1)
    gate_basis: Literal["auto", "reviewed", "all"] = _knob(
        "gate_basis", "auto", "holdout items the threshold search and the published paired tables are measured on: "
        "'reviewed' (gold from people only), 'all' (reviewed, else the frontier's answer), 'auto' = reviewed "
        "when at least min_reviewed_gold holdout items are reviewed")
    min_reviewed_gold: int = _knob("min_reviewed_gold", 300, "reviewed holdout items 'auto' needs to grade "
                                   "on people's labels only", ge=1)

    # export and quantisation
    exporter: Literal["optimum", "torch"] = _knob("exporter", "optimum", "ONNX exporter (torch is the fallback)")
    parity_max_logit_delta: float = _knob("parity_max_logit_delta", 1e-3, "max |torch - onnx| logit", gt=0)
    parity_min_agreement: float = _knob("parity_min_agreement", 0.999, "argmax agreement torch vs onnx", gt=0, le=1)
    quantize: bool = _knob("quantize", True, "try dynamic int8 and keep it within the accuracy bound")
    int8_max_accuracy_drop: float = _knob("int8_max_accuracy_drop", 0.005, "holdout accuracy int8 may lose", ge=0)

    # serving and publishing
    triton_model: Optional[str] = _knob("triton_model", None, "Triton model name; default: the task name")
    load: bool = _knob("load", True, "load the new version into Triton and verify it answers")
    publish: bool = _knob("publish", True, "publish ModelRegistered to the models topic")
    verify_examples: int = _knob("verify_examples", 64, "holdout texts Triton must answer like the trainer", ge=1)
    triton_timeout_s: float = _knob("triton_timeout_s", 120.0, "how long a load may take", gt=0)

    # the trainer service
    consumer_group: str = _knob("consumer_group", "graduate-trainer", "consumer group of the service"
                                 " (prefixed with the topic namespace)")

    @field_validator("triton_model")
    @classmethod
    def _model_name(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not all(c.isalnum() or c in "._-" for c in v):
            raise ValueError("may hold only letters, digits, '.', '_' and '-'")
        return v

    @property
    def datasets_dir(self) -> Path:
        return self.var_dir / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.var_dir / "trainer" / "runs"

    def model_name_for(self, task: str) -> str:
        return self.triton_model or task

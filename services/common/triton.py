"""The small model's side of the wire: ask a Triton model for labels and confidences.

Every graduate model in Triton follows one contract (written by the trainer):
input `TEXT` (BYTES, [batch, 1]); outputs `LABEL` (BYTES, [batch, 1]), `CONFIDENCE`
(FP32, [batch, 1], calibrated) and `PROBS` (FP32, [batch, n_labels]). An extraction model
answers `LABEL` = the JSON object of the task's fields, `CONFIDENCE` = its least confident field
and also `FIELD_CONFIDENCE` (FP32, [batch, n_fields], in the order of the model's fields, which
is the task spec's and ModelRegistered.labels').

`FIELD_CONFIDENCE` is asked for only when the caller names the fields (`fields=`) and the
model's metadata lists that output (looked up once per model and version), so a classification
model, or a caller that does not need it, sends exactly the request it always did.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

INPUT = "TEXT"
OUTPUTS = ("LABEL", "CONFIDENCE")
FIELD_CONFIDENCE = "FIELD_CONFIDENCE"


class TritonUnavailable(RuntimeError):
    """Triton did not answer (down, timed out, model not loaded); the caller falls back."""


@dataclass(frozen=True)
class SmallAnswer:
    label: str
    confidence: float
    field_confidence: Optional[dict[str, float]] = None  # extraction models only: field -> confidence


def text_input(texts: list[str]) -> grpcclient.InferInput:
    arr = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
    inp = grpcclient.InferInput(INPUT, list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr)
    return inp


def answers_from(labels: np.ndarray, confidences: np.ndarray, field_confidences: Optional[np.ndarray] = None,
                 fields: Sequence[str] = ()) -> list[SmallAnswer]:
    """One answer per text; with `field_confidences` ([n, n_fields]) and as many `fields` as its
    columns, each answer carries its per-field confidences (else none: the names are unknown)."""
    per_field: list[Optional[dict[str, float]]] = [None] * len(labels.reshape(-1))
    if field_confidences is not None and fields:
        rows = np.asarray(field_confidences, dtype=np.float64).reshape(len(per_field), -1)
        if rows.shape[1] == len(fields):
            per_field = [{name: float(v) for name, v in zip(fields, row)} for row in rows]
    out = []
    for label, conf, by_field in zip(labels.reshape(-1), confidences.reshape(-1), per_field):
        out.append(SmallAnswer(label.decode("utf-8") if isinstance(label, bytes) else str(label), float(conf),
                               by_field))
    return out


class SmallModelClient:
    """Async gRPC client for graduate models served by Triton."""

    def __init__(self, grpc_url: str, timeout_s: float = 2.0) -> None:
        self.grpc_url = grpc_url
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(grpc_url)
        self._outputs: dict[tuple[str, str], frozenset[str]] = {}
        self._requested: dict[tuple[str, ...], list] = {}  # the requested outputs, built once per set

    async def model_outputs(self, model: str, version: str | None) -> frozenset[str]:
        """The output names a model version declares (its metadata, asked once and kept)."""
        key = (model, version or "")
        if key not in self._outputs:
            try:
                meta = await self._client.get_model_metadata(model, version or "", client_timeout=self.timeout_s)
            except InferenceServerException as exc:
                raise TritonUnavailable(f"{exc.status() or 'error'}: {exc.message()}") from exc
            except Exception as exc:
                raise TritonUnavailable(f"{type(exc).__name__}: {exc}") from exc
            self._outputs[key] = frozenset(o.name for o in meta.outputs)
        return self._outputs[key]

    async def classify(self, model: str, version: str | None, texts: list[str],
                       fields: Sequence[str] | None = None) -> tuple[list[SmallAnswer], float]:
        """Labels and confidences for `texts`, and the round trip in ms; TritonUnavailable on any failure.

        With `fields` (an extraction model's field names, in its order) and a model that has
        FIELD_CONFIDENCE, every answer also carries its per-field confidences."""
        start = time.perf_counter()
        names = OUTPUTS
        if fields and FIELD_CONFIDENCE in await self.model_outputs(model, version):
            names = (*OUTPUTS, FIELD_CONFIDENCE)
        try:
            result = await self._client.infer(
                model, [text_input(texts)], model_version=version or "",
                outputs=self._requested_outputs(names),
                client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise TritonUnavailable(f"{exc.status() or 'error'}: {exc.message()}") from exc
        except Exception as exc:  # grpc channel errors surface as several types
            raise TritonUnavailable(f"{type(exc).__name__}: {exc}") from exc
        elapsed = (time.perf_counter() - start) * 1000
        per_field = result.as_numpy(FIELD_CONFIDENCE) if FIELD_CONFIDENCE in names else None
        return answers_from(result.as_numpy("LABEL"), result.as_numpy("CONFIDENCE"), per_field,
                            tuple(fields or ())), elapsed

    def _requested_outputs(self, names: tuple[str, ...]) -> list:
        requested = self._requested.get(names)
        if requested is None:
            requested = self._requested[names] = [grpcclient.InferRequestedOutput(o) for o in names]
        return requested

    async def ready(self, model: str | None = None, version: str | None = None) -> bool:
        try:
            if model:
                return await self._client.is_model_ready(model, version or "")
            return await self._client.is_server_ready()
        except Exception:
            return False

    async def close(self) -> None:
        await self._client.close()

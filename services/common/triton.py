"""The small model's side of the wire: ask a Triton model for labels and confidences.

Every graduate model in Triton follows one contract (written by the trainer):
input `TEXT` (BYTES, [batch, 1]); outputs `LABEL` (BYTES, [batch, 1]), `CONFIDENCE`
(FP32, [batch, 1], calibrated) and `PROBS` (FP32, [batch, n_labels]).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

INPUT = "TEXT"
OUTPUTS = ("LABEL", "CONFIDENCE")


class TritonUnavailable(RuntimeError):
    """Triton did not answer (down, timed out, model not loaded); the caller falls back."""


@dataclass(frozen=True)
class SmallAnswer:
    label: str
    confidence: float


def text_input(texts: list[str]) -> grpcclient.InferInput:
    arr = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
    inp = grpcclient.InferInput(INPUT, list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr)
    return inp


def answers_from(labels: np.ndarray, confidences: np.ndarray) -> list[SmallAnswer]:
    out = []
    for label, conf in zip(labels.reshape(-1), confidences.reshape(-1)):
        out.append(SmallAnswer(label.decode("utf-8") if isinstance(label, bytes) else str(label), float(conf)))
    return out


class SmallModelClient:
    """Async gRPC client for graduate models served by Triton."""

    def __init__(self, grpc_url: str, timeout_s: float = 2.0) -> None:
        self.grpc_url = grpc_url
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(grpc_url)

    async def classify(self, model: str, version: str | None, texts: list[str]) -> tuple[list[SmallAnswer], float]:
        """Labels and confidences for `texts`, and the round trip in ms; TritonUnavailable on any failure."""
        start = time.perf_counter()
        try:
            result = await self._client.infer(
                model, [text_input(texts)], model_version=version or "",
                outputs=[grpcclient.InferRequestedOutput(o) for o in OUTPUTS],
                client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise TritonUnavailable(f"{exc.status() or 'error'}: {exc.message()}") from exc
        except Exception as exc:  # grpc channel errors surface as several types
            raise TritonUnavailable(f"{type(exc).__name__}: {exc}") from exc
        elapsed = (time.perf_counter() - start) * 1000
        return answers_from(result.as_numpy("LABEL"), result.as_numpy("CONFIDENCE")), elapsed

    async def ready(self, model: str | None = None, version: str | None = None) -> bool:
        try:
            if model:
                return await self._client.is_model_ready(model, version or "")
            return await self._client.is_server_ready()
        except Exception:
            return False

    async def close(self) -> None:
        await self._client.close()

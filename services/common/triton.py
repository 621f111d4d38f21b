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

The client speaks KServe v2 gRPC through the stub that tritonclient ships (service_pb2_grpc) on a
grpc.aio channel, with the tensors as raw bytes: on the router's small path this costs less CPU
than tritonclient.grpc.aio (its InferInput/InferResult and numpy round trips), its sync client in a
thread, or its HTTP client (bench/bench_triton_client.py measures the four side by side).
"""
from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

INPUT = "TEXT"
OUTPUTS = ("LABEL", "CONFIDENCE")
FIELD_CONFIDENCE = "FIELD_CONFIDENCE"
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
_LENGTH = struct.Struct("<I")


class TritonUnavailable(RuntimeError):
    """Triton did not answer (down, timed out, model not loaded); the caller falls back."""


@dataclass(frozen=True)
class SmallAnswer:
    label: str
    confidence: float
    field_confidence: Optional[dict[str, float]] = None  # extraction models only: field -> confidence


def encode_texts(texts: Sequence[str]) -> bytes:
    """A BYTES tensor's raw contents: each element as a 4-byte little-endian length and its bytes."""
    parts = []
    for t in texts:
        b = t.encode("utf-8")
        parts.append(_LENGTH.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def decode_texts(raw: bytes) -> list[str]:
    """The elements of a BYTES tensor's raw contents, as text."""
    out, i, n = [], 0, len(raw)
    while i < n:
        (size,) = _LENGTH.unpack_from(raw, i)
        i += 4
        out.append(raw[i:i + size].decode("utf-8"))
        i += size
    if i != n:
        raise ValueError(f"BYTES tensor ends mid-element ({n} bytes)")
    return out


def answers_from(labels: Sequence[str], confidences: Sequence[float],
                 field_confidences: Optional[np.ndarray] = None, fields: Sequence[str] = ()) -> list[SmallAnswer]:
    """One answer per text; with `field_confidences` ([n, n_fields]) and as many `fields` as its
    columns, each answer carries its per-field confidences (else none: the names are unknown)."""
    per_field: list[Optional[dict[str, float]]] = [None] * len(labels)
    if field_confidences is not None and fields and len(labels):
        rows = np.asarray(field_confidences, dtype=np.float64).reshape(len(labels), -1)
        if rows.shape[1] == len(fields):
            per_field = [{name: float(v) for name, v in zip(fields, row)} for row in rows]
    return [SmallAnswer(label, float(conf), by_field)
            for label, conf, by_field in zip(labels, confidences, per_field)]


def rpc_failure(exc: Exception) -> TritonUnavailable:
    if isinstance(exc, grpc.aio.AioRpcError):
        return TritonUnavailable(f"{exc.code().name}: {exc.details()}")
    return TritonUnavailable(f"{type(exc).__name__}: {exc}")


class SmallModelClient:
    """Async gRPC client for graduate models served by Triton (one channel, reused)."""

    def __init__(self, grpc_url: str, timeout_s: float = 2.0) -> None:
        self.grpc_url = grpc_url
        self.timeout_s = timeout_s
        self._channel = grpc.aio.insecure_channel(grpc_url, options=CHANNEL_OPTIONS)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._outputs: dict[tuple[str, str], frozenset[str]] = {}

    async def model_outputs(self, model: str, version: str | None) -> frozenset[str]:
        """The output names a model version declares (its metadata, asked once and kept)."""
        key = (model, version or "")
        if key not in self._outputs:
            try:
                meta = await self._stub.ModelMetadata(
                    service_pb2.ModelMetadataRequest(name=model, version=version or ""), timeout=self.timeout_s)
            except Exception as exc:
                raise rpc_failure(exc) from exc
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
            response = await self._stub.ModelInfer(infer_request(model, version, texts, names),
                                                    timeout=self.timeout_s)
        except Exception as exc:  # AioRpcError: unavailable, deadline exceeded, model not loaded, ...
            raise rpc_failure(exc) from exc
        elapsed = (time.perf_counter() - start) * 1000
        raw = dict(zip((o.name for o in response.outputs), response.raw_output_contents))
        try:
            labels = decode_texts(raw["LABEL"])
            confidences = struct.unpack(f"<{len(labels)}f", raw["CONFIDENCE"])
            per_field = (np.frombuffer(raw[FIELD_CONFIDENCE], dtype="<f4")
                         if FIELD_CONFIDENCE in names and FIELD_CONFIDENCE in raw else None)
        except (KeyError, ValueError, struct.error, UnicodeDecodeError) as exc:
            raise TritonUnavailable(f"model {model} answered off the graduate contract: {exc!r}") from exc
        if len(labels) != len(texts):
            raise TritonUnavailable(f"model {model} answered {len(labels)} labels for {len(texts)} texts")
        return answers_from(labels, confidences, per_field, tuple(fields or ())), elapsed

    async def ready(self, model: str | None = None, version: str | None = None) -> bool:
        try:
            if model:
                answer = await self._stub.ModelReady(service_pb2.ModelReadyRequest(name=model, version=version or ""),
                                                     timeout=self.timeout_s)
            else:
                answer = await self._stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=self.timeout_s)
            return answer.ready
        except Exception:
            return False

    async def close(self) -> None:
        await self._channel.close()


def infer_request(model: str, version: str | None, texts: Sequence[str],
                  outputs: Sequence[str]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version or "")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = INPUT, "BYTES"
    tensor.shape.extend((len(texts), 1))
    for name in outputs:
        request.outputs.add().name = name
    request.raw_input_contents.append(encode_texts(texts))
    return request

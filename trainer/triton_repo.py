"""The Triton model repository: write a version, load it (explicit model control), verify it.

Layout (what the router and the shadow processor rely on):
    <repository>/<triton_model>/config.pbtxt
    <repository>/<triton_model>/<version>/{model.py, model.onnx, tokenizer.json, labels.json,
                                           calibration.json, version.json}
Versions are integers; graduate's model_version is str(version). Every version in the folder
is served (version_policy all), so a candidate in shadow and the version serving in small mode
answer side by side.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

MODEL_PY = Path(__file__).with_name("triton_model.py")
VERSION_FILES = ("model.py", "model.onnx", "tokenizer.json", "labels.json", "calibration.json", "version.json")
MAX_BATCH_SIZE = 64

# (name, data type, dims) of each output; the input is always TEXT (TYPE_STRING, [1]).
CLASSIFICATION_OUTPUTS = (("LABEL", "TYPE_STRING", "1"), ("CONFIDENCE", "TYPE_FP32", "1"), ("PROBS", "TYPE_FP32", "-1"))

CONFIG_PBTXT = """\
name: "{name}"
backend: "python"
max_batch_size: {max_batch}
dynamic_batching {{ max_queue_delay_microseconds: 500 }}
version_policy: {{ all {{ }} }}
input [
  {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }}
]
output [
{outputs}
]
instance_group [ {{ kind: {kind} count: 1 }} ]
"""


class TritonError(RuntimeError):
    """Triton refused or failed a model; the message carries what Triton said."""


def config_pbtxt(name: str, gpu: bool = False, outputs: tuple[tuple[str, str, str], ...] = CLASSIFICATION_OUTPUTS) -> str:
    lines = ",\n".join(f'  {{ name: "{o}" data_type: {t} dims: [ {d} ] }}' for o, t, d in outputs)
    return CONFIG_PBTXT.format(name=name, max_batch=MAX_BATCH_SIZE, kind="KIND_GPU" if gpu else "KIND_CPU",
                               outputs=lines)


def stage_version(stage: Path, onnx_file: Path, tokenizer, labels: list[str], temperature: float,
                  meta: dict[str, Any], model_py: Path = MODEL_PY) -> Path:
    """Write a complete version folder at `stage` (not yet in the repository)."""
    from tokenizers import Tokenizer

    stage.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_py, stage / "model.py")
    if onnx_file.resolve() != (stage / "model.onnx").resolve():
        shutil.copyfile(onnx_file, stage / "model.onnx")
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.enable_truncation(max_length=int(meta["max_length"]))
    backend.enable_padding(pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
    backend.save(str(stage / "tokenizer.json"))
    (stage / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    (stage / "calibration.json").write_text(json.dumps({"method": "temperature", "temperature": temperature}) + "\n")
    version = dict(meta, pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
    (stage / "version.json").write_text(json.dumps(version, indent=2, sort_keys=True) + "\n")
    return stage


def existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def install_version(stage: Path, repository: Path, name: str, gpu: bool = False,
                    files: tuple[str, ...] = VERSION_FILES,
                    outputs: tuple[tuple[str, str, str], ...] = CLASSIFICATION_OUTPUTS) -> tuple[int, Path]:
    """Copy a staged version into the repository under the next free integer version."""
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = (existing_versions(model_dir) or [0])[-1] + 1
    while True:
        target = model_dir / str(version)
        try:
            target.mkdir()  # claims the number; a concurrent trainer moves on to the next one
            break
        except FileExistsError:
            version += 1
    for file in files:
        shutil.copyfile(stage / file, target / file)
    _write_atomic(model_dir / "config.pbtxt", config_pbtxt(name, gpu, outputs))
    version_json = json.loads((target / "version.json").read_text())
    _write_atomic(target / "version.json", json.dumps(version_json | {"version": version}, indent=2,
                                                      sort_keys=True) + "\n")
    return version, target


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def remove_version(repository: Path, name: str, version: int) -> None:
    shutil.rmtree(repository / name / str(version), ignore_errors=True)


def load_model(url: str, name: str, version: int | None, timeout_s: float) -> float:
    """Ask Triton to (re)load `name` and wait until `version` (if given) is ready; returns the seconds."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    started = time.perf_counter()
    client = httpclient.InferenceServerClient(url=url, network_timeout=timeout_s, connection_timeout=10)
    try:
        try:
            client.load_model(name)
        except InferenceServerException as exc:
            raise TritonError(f"Triton at {url} failed to load {name}: {exc}") from None
        deadline = time.monotonic() + timeout_s
        while version is not None and not client.is_model_ready(name, str(version)):
            if time.monotonic() > deadline:
                raise TritonError(f"{name} version {version} not ready after {timeout_s:.0f}s at {url}")
            time.sleep(0.2)
    finally:
        client.close()
    return time.perf_counter() - started


def unload_model(url: str, name: str) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=url)
    try:
        client.unload_model(name)
    finally:
        client.close()


def infer_texts(url: str, name: str, version: int | str | None, texts: list[str],
                extra: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Triton's LABEL, CONFIDENCE and `extra` output (PROBS or FIELD_CONFIDENCE) for texts, in
    batches of 64 over HTTP (version None or "": the newest)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=url)
    labels, confidences, rows = [], [], []
    try:
        for start in range(0, len(texts), MAX_BATCH_SIZE):
            chunk = texts[start:start + MAX_BATCH_SIZE]
            text = httpclient.InferInput("TEXT", [len(chunk), 1], "BYTES")
            text.set_data_from_numpy(np.array([[t.encode("utf-8")] for t in chunk], dtype=np.object_))
            outputs = [httpclient.InferRequestedOutput(n) for n in ("LABEL", "CONFIDENCE", extra)]
            result = client.infer(name, [text], model_version=str(version or ""), outputs=outputs)
            labels.extend(v.decode("utf-8") for v in result.as_numpy("LABEL").reshape(-1))
            confidences.append(result.as_numpy("CONFIDENCE").reshape(-1))
            rows.append(result.as_numpy(extra))
    finally:
        client.close()
    return labels, np.concatenate(confidences), np.concatenate(rows)


def classify(url: str, name: str, version: int, texts: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Triton's (labels, confidences [n], probabilities [n, L]) for texts."""
    return infer_texts(url, name, version, texts, "PROBS")


def verify(url: str, name: str, version: int, texts: list[str], expected_labels: list[str],
           expected_probs: np.ndarray, atol: float = 1e-4) -> dict[str, Any]:
    """Triton must answer like the trainer's in-process run of the same version folder."""
    labels, confidences, probs = classify(url, name, version, texts)
    agreement = float(np.mean([a == b for a, b in zip(labels, expected_labels)]))
    delta = float(np.max(np.abs(probs - expected_probs)))
    report = {"n": len(texts), "label_agreement": agreement, "max_abs_prob_delta": delta,
              "confidence_is_max_prob": bool(np.allclose(confidences, probs.max(axis=1), atol=1e-6))}
    if agreement < 1.0 or delta > atol or not report["confidence_is_max_prob"]:
        raise TritonError(f"{name} version {version} answers differently from the trainer: {report}")
    return report

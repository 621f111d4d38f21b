"""The Triton model repository: write a version, load it (explicit model control), verify it.

Layout (what the router and the shadow processor rely on):
    <repository>/<triton_model>/config.pbtxt
    <repository>/<triton_model>/<version>/{model.py, model.onnx, tokenizer.json, labels.json,
                                           calibration.json, version.json}
Versions are integers; graduate's model_version is str(version). Every version in the folder
is served (version_policy all), so a candidate in shadow and the version serving in small mode
answer side by side.

Two layouts, both written by `lay_out_version` (install_version picks one from `gpu`):
- "cpu" (above): the Python backend runs tokenizer and onnxruntime in one process (CPU_INSTANCES =
  1), and a dynamic batch of several texts as concurrent onnxruntime calls of one intra-op thread
  each, one per core where Triton runs (`parallel_runs: "auto"`); a lone request runs at once on
  one thread, on the instance that served the last one.
- "gpu": the ONNX graph goes to its own model `<model>_onnx` on Triton's onnxruntime backend
  (platform onnxruntime_onnx, ONNX_GPU_INSTANCES instances per GPU, dynamic batching with
  preferred sizes), and `<model>` is a Python-backend front (trainer/triton_model_gpu.py:
  tokenise, BLS call to `<model>_onnx` at the same version, calibrate) with FRONT_INSTANCES CPU
  instances. Both keep the newest two versions loaded (version_policy latest 2): the candidate in
  shadow and the version in small mode.
    <repository>/<model>/config.pbtxt, <version>/{model.py, tokenizer.json, labels.json,
                                                  calibration.json, version.json}
    <repository>/<model>_onnx/config.pbtxt, <version>/model.onnx
  Callers see the same model name, input and outputs in both layouts.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

MODEL_PY = Path(__file__).with_name("triton_model.py")
GPU_MODEL_PY = Path(__file__).with_name("triton_model_gpu.py")
LAYOUTS = ("cpu", "gpu")
ONNX_SUFFIX = "_onnx"
ONNX_GPU_INSTANCES = 2  # onnxruntime instances per GPU: one runs while the next batch is formed
FRONT_INSTANCES = 4  # tokenising Python processes (CPU) feeding the GPU
PREFERRED_BATCHES = (16, 32, 64)
# No queue delay anywhere: a lone request runs at once (a 500 us delay measured +0.6 ms at concurrency 1),
# and under load the dynamic batcher still batches, since requests that arrive while an instance is busy
# wait in its queue and the next execution takes all of them (up to MAX_BATCH_SIZE).
QUEUE_DELAY_US = 0
VERSION_FILES = ("model.py", "model.onnx", "tokenizer.json", "labels.json", "calibration.json", "version.json")
MAX_BATCH_SIZE = 64
# The "cpu" layout: one Python-backend process; a batch runs as CPU_PARALLEL_RUNS concurrent onnxruntime
# calls ("auto": the cores Triton may use // the instances; a number fixes it) of CPU_INTRA_OP_THREADS
# intra-op threads each. bench_router, int8 on 2 cores, against two instances with the cores split between
# them (the layout before): 0.91-1.07x its texts/s with 8 clients (quiet machine / load 6), and lone requests
# 14-16 % faster: one that follows a pause no longer lands on an instance that has been idle.
CPU_INSTANCES = 1
CPU_INTRA_OP_THREADS = "1"
CPU_PARALLEL_RUNS = "auto"

# (name, data type, dims) of each output; the input is always TEXT (TYPE_STRING, [1]).
CLASSIFICATION_OUTPUTS = (("LABEL", "TYPE_STRING", "1"), ("CONFIDENCE", "TYPE_FP32", "1"), ("PROBS", "TYPE_FP32", "-1"))

CONFIG_PBTXT = """\
name: "{name}"
backend: "python"
max_batch_size: {max_batch}
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
version_policy: {{ all {{ }} }}
input [
  {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }}
]
output [
{outputs}
]
instance_group [ {{ kind: {kind} count: {instances} }} ]
parameters {{ key: "intra_op_threads" value {{ string_value: "{threads}" }} }}
parameters {{ key: "parallel_runs" value {{ string_value: "{parallel}" }} }}
"""


GPU_FRONT_PBTXT = """\
name: "{name}"
backend: "python"
max_batch_size: {max_batch}
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
version_policy: {{ latest {{ num_versions: 2 }} }}
input [
  {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }}
]
output [
{outputs}
]
instance_group [ {{ kind: KIND_CPU count: {instances} }} ]
"""

ONNX_PBTXT = """\
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
version_policy: {{ latest {{ num_versions: 2 }} }}
input [
{inputs}
]
output [
  {{ name: "{output}" data_type: TYPE_FP32 dims: [ {n_labels} ] }}
]
instance_group [ {{ kind: KIND_GPU count: {instances} }} ]
dynamic_batching {{ preferred_batch_size: [ {preferred} ] max_queue_delay_microseconds: {delay_us} }}
"""


class TritonError(RuntimeError):
    """Triton refused or failed a model; the message carries what Triton said."""


def config_pbtxt(name: str, gpu: bool = False, outputs: tuple[tuple[str, str, str], ...] = CLASSIFICATION_OUTPUTS) -> str:
    lines = ",\n".join(f'  {{ name: "{o}" data_type: {t} dims: [ {d} ] }}' for o, t, d in outputs)
    return CONFIG_PBTXT.format(name=name, max_batch=MAX_BATCH_SIZE, delay_us=QUEUE_DELAY_US,
                               kind="KIND_GPU" if gpu else "KIND_CPU", instances=1 if gpu else CPU_INSTANCES,
                               threads=CPU_INTRA_OP_THREADS, parallel=CPU_PARALLEL_RUNS, outputs=lines)


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


def gpu_front_pbtxt(name: str, outputs: tuple[tuple[str, str, str], ...] = CLASSIFICATION_OUTPUTS) -> str:
    lines = ",\n".join(f'  {{ name: "{o}" data_type: {t} dims: [ {d} ] }}' for o, t, d in outputs)
    return GPU_FRONT_PBTXT.format(name=name, max_batch=MAX_BATCH_SIZE, delay_us=QUEUE_DELAY_US, outputs=lines,
                                  instances=FRONT_INSTANCES)


def onnx_pbtxt(name: str, inputs: list[str], output: str, n_labels: int) -> str:
    lines = ",\n".join(f'  {{ name: "{i}" data_type: TYPE_INT64 dims: [ -1 ] }}' for i in inputs)
    return ONNX_PBTXT.format(name=name, max_batch=MAX_BATCH_SIZE, inputs=lines, output=output, n_labels=n_labels,
                             instances=ONNX_GPU_INSTANCES, preferred=", ".join(map(str, PREFERRED_BATCHES)),
                             delay_us=QUEUE_DELAY_US)


def onnx_signature(onnx_file: Path) -> tuple[list[str], str]:
    """(graph input names, first output name) of an ONNX file, weights not loaded."""
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers], graph.output[0].name


def install_version(stage: Path, repository: Path, name: str, gpu: bool = False,
                    files: tuple[str, ...] = VERSION_FILES,
                    outputs: tuple[tuple[str, str, str], ...] = CLASSIFICATION_OUTPUTS) -> tuple[int, Path]:
    """Copy a staged version into the repository under the next free integer version: the "gpu"
    layout for a classifier on a GPU, else the Python backend (on the GPU for other task kinds)."""
    layout = "gpu" if gpu and outputs == CLASSIFICATION_OUTPUTS and files == VERSION_FILES else "cpu"
    return lay_out_version(stage, repository, name, layout, files=files, outputs=outputs, python_on_gpu=gpu)


def lay_out_version(stage: Path, repository: Path, name: str, layout: str = "cpu", *,
                    files: tuple[str, ...] = VERSION_FILES,
                    outputs: tuple[tuple[str, str, str], ...] = CLASSIFICATION_OUTPUTS,
                    python_on_gpu: bool = False) -> tuple[int, Path]:
    """Lay a staged version out in the repository for `layout` ("cpu" or "gpu", module docstring)
    under the next free integer version; returns (version, the front model's version folder)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if layout == "gpu":
        return _lay_out_gpu(stage, repository, name)
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
    _write_atomic(model_dir / "config.pbtxt", config_pbtxt(name, python_on_gpu, outputs))
    version_json = json.loads((target / "version.json").read_text())
    _write_atomic(target / "version.json", json.dumps(version_json | {"version": version}, indent=2,
                                                      sort_keys=True) + "\n")
    return version, target


def _claim_version(model_dir: Path, other: Path) -> int:
    """The next integer free in both folders, claimed by creating it in `model_dir`."""
    model_dir.mkdir(parents=True, exist_ok=True)
    version = max((existing_versions(model_dir) or [0])[-1], (existing_versions(other) or [0])[-1]) + 1
    while True:
        try:
            (model_dir / str(version)).mkdir()  # a concurrent trainer moves on to the next one
            return version
        except FileExistsError:
            version += 1


def _lay_out_gpu(stage: Path, repository: Path, name: str) -> tuple[int, Path]:
    front_dir, onnx_dir = repository / name, repository / f"{name}{ONNX_SUFFIX}"
    version = _claim_version(front_dir, onnx_dir)
    inputs, output = onnx_signature(stage / "model.onnx")
    labels = json.loads((stage / "labels.json").read_text())
    (onnx_dir / str(version)).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(stage / "model.onnx", onnx_dir / str(version) / "model.onnx")
    _write_atomic(onnx_dir / "config.pbtxt", onnx_pbtxt(f"{name}{ONNX_SUFFIX}", inputs, output, len(labels)))
    target = front_dir / str(version)
    shutil.copyfile(GPU_MODEL_PY, target / "model.py")
    for file in ("tokenizer.json", "labels.json", "calibration.json"):
        shutil.copyfile(stage / file, target / file)
    meta = json.loads((stage / "version.json").read_text())
    _write_atomic(target / "version.json", json.dumps(meta | {"version": version, "layout": "gpu", "onnx_inputs": inputs,
                                                              "onnx_output": output}, indent=2, sort_keys=True) + "\n")
    _write_atomic(front_dir / "config.pbtxt", gpu_front_pbtxt(name))
    return version, target


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def remove_version(repository: Path, name: str, version: int) -> None:
    shutil.rmtree(repository / name / str(version), ignore_errors=True)
    shutil.rmtree(repository / f"{name}{ONNX_SUFFIX}" / str(version), ignore_errors=True)


def load_model(url: str, name: str, version: int | None, timeout_s: float) -> float:
    """Ask Triton to (re)load `name` and wait until `version` (if given) is ready; returns the seconds."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    started = time.perf_counter()
    client = httpclient.InferenceServerClient(url=url, network_timeout=timeout_s, connection_timeout=10)
    try:
        try:
            # the GPU layout's graph first: the front calls it by BLS, which loads nothing itself
            if any(m.get("name") == f"{name}{ONNX_SUFFIX}" for m in client.get_model_repository_index()):
                client.load_model(f"{name}{ONNX_SUFFIX}")
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
                extra: str, batch: int = MAX_BATCH_SIZE) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Triton's LABEL, CONFIDENCE and `extra` output (PROBS or FIELD_CONFIDENCE) for texts, `batch`
    texts a request over HTTP (version None or "": the newest)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=url)
    labels, confidences, rows = [], [], []
    try:
        for start in range(0, len(texts), batch):
            chunk = texts[start:start + batch]
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


def classify(url: str, name: str, version: int, texts: list[str],
             batch: int = MAX_BATCH_SIZE) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Triton's (labels, confidences [n], probabilities [n, L]) for texts, `batch` a request."""
    return infer_texts(url, name, version, texts, "PROBS", batch)


# The trainer checks the served version one text a request against its own run one text a call: an int8
# graph quantizes activations with one scale per batch (onnxruntime's dynamic quantization), so a text's
# answer depends on the texts it is batched with, and Triton splits a dynamic batch over the cores
# (trainer/triton_model.py): one at a time is the comparison that means the same on both sides, and it is
# what a lone request gets.
VERIFY_BATCH = 1


def verify(url: str, name: str, version: int, texts: list[str], expected_labels: list[str],
           expected_probs: np.ndarray, atol: float = 1e-4) -> dict[str, Any]:
    """Triton must answer like the trainer's in-process run of the same version folder (both one text
    at a time: VERIFY_BATCH)."""
    labels, confidences, probs = classify(url, name, version, texts, VERIFY_BATCH)
    agreement = float(np.mean([a == b for a, b in zip(labels, expected_labels)]))
    delta = float(np.max(np.abs(probs - expected_probs)))
    report = {"n": len(texts), "label_agreement": agreement, "max_abs_prob_delta": delta,
              "confidence_is_max_prob": bool(np.allclose(confidences, probs.max(axis=1), atol=1e-6))}
    if agreement < 1.0 or delta > atol or not report["confidence_is_max_prob"]:
        raise TritonError(f"{name} version {version} answers differently from the trainer: {report}")
    return report

"""Triton Python-backend model: raw text in, calibrated label, confidence and probabilities out.

The trainer copies this file verbatim to `<model>/<version>/model.py`. It needs only numpy,
onnxruntime and tokenizers (what the Triton server's own venv holds, no torch), and the files
beside it: model.onnx, tokenizer.json, labels.json, calibration.json, version.json. The trainer
imports `TextClassifier` from here too, so its in-process answers are the served code's answers.

I/O: TEXT (TYPE_STRING, [1]) -> LABEL (TYPE_STRING, [1]), CONFIDENCE (TYPE_FP32, [1], the
calibrated max probability), PROBS (TYPE_FP32, [-1], in labels.json order).
"""
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

# Texts per onnxruntime run; Triton's max_batch_size is 64 too.
CHUNK = 64


class TextClassifier:
    """Tokenizer + ONNX graph + temperature, for a version folder (no Triton needed)."""

    def __init__(self, version_dir, onnx_file="model.onnx", use_gpu=False, device_id=0, threads=0, parallel=1):
        root = Path(version_dir)
        meta = json.loads((root / "version.json").read_text())
        self.labels = json.loads((root / "labels.json").read_text())
        self.temperature = float(json.loads((root / "calibration.json").read_text())["temperature"])
        # A none-of-these class (the last label) is learned but never answered: see trainer/scope.py.
        self.in_scope = len(self.labels) - (1 if meta.get("out_of_scope_label") else 0)
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=int(meta["max_length"]))
        self.tokenizer.enable_padding(pad_id=int(meta["pad_id"]), pad_token=meta["pad_token"])
        options = ort.SessionOptions()
        # Idle intra-op threads sleep instead of spinning: Triton runs one process per model
        # version, and spinning pools on a few shared cores measured 2-3x slower batch-1 latency.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = int(threads)
        providers = ["CPUExecutionProvider"]
        if use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(device_id)}))
        self.session = ort.InferenceSession(str(root / onnx_file), options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        # `parallel` > 1: a batch of several texts runs as that many concurrent onnxruntime calls on one
        # session (thread-safe; run() and encode_batch() release the GIL), a lone text on the caller's thread.
        self.parallel = max(1, int(parallel))
        self.pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="ort") if self.parallel > 1 else None

    def logits(self, texts):
        """Raw logits [n, n_labels] (float32); long lists run in length-sorted chunks."""
        texts = list(texts)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        size = CHUNK
        if self.pool is not None and len(texts) > 1:
            size = min(CHUNK, -(-len(texts) // self.parallel))
        chunks = [order[start:start + size] for start in range(0, len(order), size)]
        if self.pool is None or len(chunks) == 1:
            results = [self._run([texts[i] for i in rows]) for rows in chunks]
        else:
            results = list(self.pool.map(lambda rows: self._run([texts[i] for i in rows]), chunks))
        for rows, logits in zip(chunks, results):
            out[rows] = logits
        return out

    def _run(self, texts):
        encodings = self.tokenizer.encode_batch(texts)
        feed = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return self.session.run([self.output_name], {k: feed[k] for k in self.input_names})[0]

    def classify(self, texts):
        """(labels, confidences [n] float32, calibrated probabilities [n, n_labels] float32).

        The label is the best in-scope class and the confidence its probability: mass on an
        out-of-scope class lowers the confidence, so the router falls back to the frontier."""
        z = self.logits(texts) / np.float32(self.temperature)
        z = z - z.max(axis=1, keepdims=True)
        probs = np.exp(z)
        probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
        best = probs[:, :self.in_scope].argmax(axis=1)
        return [self.labels[i] for i in best], probs[np.arange(len(best)), best], probs


def config_count(config, key, absent):
    """A count from the model config's parameters: "auto" = the cores this process may use // the CPU
    instances (at least 1), so instances x count = cores; a number as it is; absent: `absent`."""
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    if value != "auto":
        return int(value or absent)
    instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", []) if g.get("kind") == "KIND_CPU")
    return max(1, len(os.sched_getaffinity(0)) // max(1, instances))


def intra_op_threads(config):
    """onnxruntime's intra-op threads per run (`intra_op_threads`; absent or 0: its default, every core)."""
    return config_count(config, "intra_op_threads", 0)


def parallel_runs(config):
    """Concurrent onnxruntime runs per batch (`parallel_runs`; absent: 1, a batch in one run)."""
    return config_count(config, "parallel_runs", 1)


class TritonPythonModel:
    """The Triton entry point; the texts of one dynamic batch run together (split over `parallel_runs`)."""

    def initialize(self, args):
        global pb_utils
        import triton_python_backend_utils as pb_utils

        version_dir = Path(args["model_repository"]) / args["model_version"]
        gpu = args.get("model_instance_kind") == "GPU"
        config = json.loads(args.get("model_config") or "{}")
        threads = 0 if gpu else intra_op_threads(config)
        parallel = 1 if gpu else parallel_runs(config)
        self.classifier = TextClassifier(version_dir, use_gpu=gpu, device_id=args.get("model_instance_device_id", 0),
                                         threads=threads, parallel=parallel)

    def execute(self, requests):
        texts, sizes = [], []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            decoded = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in values]
            texts.extend(decoded)
            sizes.append(len(decoded))
        labels, confidences, probs = self.classifier.classify(texts)
        responses, start = [], 0
        for size in sizes:
            end = start + size
            label = np.array([[x.encode("utf-8")] for x in labels[start:end]], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("LABEL", label.reshape(size, 1)),
                pb_utils.Tensor("CONFIDENCE", confidences[start:end].reshape(size, 1)),
                pb_utils.Tensor("PROBS", probs[start:end]),
            ]))
            start = end
        return responses

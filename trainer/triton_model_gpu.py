"""Triton Python-backend front of the GPU layout: tokenise, run the ONNX graph on Triton's own
onnxruntime backend, calibrate.

The trainer copies this file to `<model>/<version>/model.py` when it lays out the repository for
GPU serving (trainer/triton_repo.py). The encoder itself is the model `<model>_onnx` (platform
onnxruntime_onnx, GPU instances, dynamic batching); this step asks it for the SAME version through
BLS (business logic scripting), so version N of the front always runs version N of the graph — a
Triton ensemble cannot map its versions to its steps' versions, and shadow (a candidate) and small
mode (the serving version) need two versions answering side by side.

I/O as the CPU model (trainer/triton_model.py): TEXT -> LABEL, CONFIDENCE, PROBS. Needs numpy and
tokenizers only (no onnxruntime in this process).
"""
import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


class Preprocessor:
    """Tokenizer, labels and temperature of a version folder (no Triton needed)."""

    def __init__(self, version_dir):
        root = Path(version_dir)
        meta = json.loads((root / "version.json").read_text())
        self.labels = json.loads((root / "labels.json").read_text())
        self.temperature = float(json.loads((root / "calibration.json").read_text())["temperature"])
        self.input_names = list(meta.get("onnx_inputs") or ["input_ids", "attention_mask", "token_type_ids"])
        self.output_name = meta.get("onnx_output") or "logits"
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=int(meta["max_length"]))
        self.tokenizer.enable_padding(pad_id=int(meta["pad_id"]), pad_token=meta["pad_token"])

    def encode(self, texts):
        """{input name: int64 [n, longest]} for the graph's inputs."""
        encodings = self.tokenizer.encode_batch(list(texts))
        feed = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}
        return {name: feed[name] for name in self.input_names}

    def calibrate(self, logits):
        """(labels, confidences [n] float32, calibrated probabilities [n, n_labels] float32)."""
        z = np.asarray(logits, dtype=np.float32) / np.float32(self.temperature)
        z = z - z.max(axis=1, keepdims=True)
        probs = np.exp(z)
        probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
        best = probs.argmax(axis=1)
        return [self.labels[i] for i in best], probs.max(axis=1), probs


class TritonPythonModel:
    """The Triton entry point; the requests of one dynamic batch make one request to the graph."""

    def initialize(self, args):
        global pb_utils
        import triton_python_backend_utils as pb_utils

        self.onnx_model = f"{args['model_name']}_onnx"
        self.version = int(args["model_version"])
        self.pre = Preprocessor(Path(args["model_repository"]) / args["model_version"])

    def execute(self, requests):
        texts, sizes = [], []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            decoded = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in values]
            texts.extend(decoded)
            sizes.append(len(decoded))
        feed = self.pre.encode(texts)
        graph = pb_utils.InferenceRequest(model_name=self.onnx_model, model_version=self.version,
                                          requested_output_names=[self.pre.output_name],
                                          inputs=[pb_utils.Tensor(n, feed[n]) for n in self.pre.input_names])
        answer = graph.exec()
        if answer.has_error():
            error = pb_utils.TritonError(f"{self.onnx_model} version {self.version}: {answer.error().message()}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        logits = pb_utils.get_output_tensor_by_name(answer, self.pre.output_name).as_numpy()
        labels, confidences, probs = self.pre.calibrate(logits)
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

"""Triton Python-backend model for extraction: raw text in, the task's fields as JSON out.

The trainer copies this file verbatim to `<model>/<version>/model.py`. Like the classification
model it needs only numpy, onnxruntime and tokenizers (the Triton server's own venv), and the
files beside it: model.onnx, tokenizer.json, labels.json (the BIO tags), fields.json (the field
names, in order), calibration.json, version.json. The trainer imports `TextExtractor` from here,
so its in-process answers are the served code's answers.

Decoding: per token, calibrated tag probabilities (softmax of logits / T); per field, the runs
of tokens tagged B-/I-field (a run starts at B, or at an I after a token outside the field),
the run with the highest mean probability of being inside the field is the value, cut from the
text by the tokens' character offsets. A field's confidence is the least sure token decision
about that field: min over tokens of P(inside) for the value's tokens and 1 - P(inside) for
every other token, so an absent field is confident only when no token looks like it.

I/O: TEXT (TYPE_STRING, [1]) -> LABEL (TYPE_STRING, [1]: the JSON object of every field, null
where absent, keys sorted, as `parse_fields` writes it), CONFIDENCE (TYPE_FP32, [1]: the
minimum field confidence), FIELD_CONFIDENCE (TYPE_FP32, [-1]: one per field, fields.json order).
"""
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

CHUNK = 64


def softmax(logits, temperature=1.0):
    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def field_runs(tags, begin, inside):
    """Token index runs tagged as one field: start at B (or a stray I), continue over I."""
    runs, current = [], None
    for i, tag in enumerate(tags):
        if tag == begin or (tag == inside and current is None):
            if current:
                runs.append(current)
            current = [i]
        elif tag == inside:
            current.append(i)
        elif current:
            runs.append(current)
            current = None
    if current:
        runs.append(current)
    return runs


def decode_fields(text, probs, offsets, fields):
    """(values {field: str or None}, confidences [n_fields] float32) from one text's real tokens.

    probs: [n_tokens, 1 + 2 * n_fields] calibrated tag probabilities (O, B-f1, I-f1, ...);
    offsets: [(start, end)] character offsets of the same tokens (special tokens removed)."""
    tags = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    values, confidences = {}, np.ones(len(fields), dtype=np.float32)
    for k, name in enumerate(fields):
        begin, inside = 1 + 2 * k, 2 + 2 * k
        p_in = probs[:, begin] + probs[:, inside] if len(probs) else np.zeros(0, dtype=np.float32)
        chosen = np.zeros(len(p_in), dtype=bool)
        runs = field_runs(tags.tolist(), begin, inside)
        if runs:
            best = max(runs, key=lambda run: float(p_in[run].mean()))
            chosen[best] = True
            values[name] = text[offsets[best[0]][0]:offsets[best[-1]][1]]
        else:
            values[name] = None
        if len(p_in):
            confidences[k] = float(np.min(np.where(chosen, p_in, 1.0 - p_in)))
    return values, confidences


def config_count(config, key, absent):
    """A count from the model config's parameters (trainer/triton_model.py's `intra_op_threads` and
    `parallel_runs`, read the same way): "auto" = the cores this process may use // the CPU instances."""
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    if value != "auto":
        return int(value or absent)
    instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", []) if g.get("kind") == "KIND_CPU")
    return max(1, len(os.sched_getaffinity(0)) // max(1, instances))


def fields_json(values, fields):
    return json.dumps({name: values.get(name) for name in fields}, sort_keys=True)


class TextExtractor:
    """Tokenizer + ONNX graph + temperature for a version folder (no Triton needed)."""

    def __init__(self, version_dir, onnx_file="model.onnx", use_gpu=False, device_id=0, threads=0, parallel=1):
        root = Path(version_dir)
        meta = json.loads((root / "version.json").read_text())
        self.tags = json.loads((root / "labels.json").read_text())
        self.fields = json.loads((root / "fields.json").read_text())
        self.temperature = float(json.loads((root / "calibration.json").read_text())["temperature"])
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=int(meta["max_length"]))
        self.tokenizer.enable_padding(pad_id=int(meta["pad_id"]), pad_token=meta["pad_token"])
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = int(threads)
        providers = ["CPUExecutionProvider"]
        if use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(device_id)}))
        self.session = ort.InferenceSession(str(root / onnx_file), options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        # as the classification model: a batch of several texts as `parallel` concurrent runs on one session
        self.parallel = max(1, int(parallel))
        self.pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="ort") if self.parallel > 1 else None

    def token_logits(self, texts):
        """Per text: (logits [n_tokens, n_tags] float32 over the tokens the model saw, specials included;
        character offsets; special-token mask), in the input order."""
        texts = list(texts)
        out = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        size = CHUNK if self.pool is None or len(texts) < 2 else min(CHUNK, -(-len(texts) // self.parallel))
        chunks = [order[start:start + size] for start in range(0, len(order), size)]
        runs = map if self.pool is None or len(chunks) == 1 else self.pool.map
        for rows, (encodings, logits) in zip(chunks, runs(lambda rows: self._run([texts[i] for i in rows]), chunks)):
            for k, (i, e) in enumerate(zip(rows, encodings)):
                n = int(sum(e.attention_mask))
                out[i] = (logits[k, :n].astype(np.float32), e.offsets[:n], e.special_tokens_mask[:n])
        return out

    def _run(self, texts):
        encodings = self.tokenizer.encode_batch(texts)
        feed = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return encodings, self.session.run([self.output_name], {k: feed[k] for k in self.input_names})[0]

    def extract(self, texts, temperature=None):
        """(JSON labels, request confidences [n] float32, field confidences [n, n_fields] float32);
        `temperature` overrides the calibrated one (the trainer measures before and after)."""
        texts = list(texts)
        temperature = self.temperature if temperature is None else float(temperature)
        labels = []
        field_conf = np.ones((len(texts), len(self.fields)), dtype=np.float32)
        for i, (text, (logits, offsets, special)) in enumerate(zip(texts, self.token_logits(texts))):
            real = [t for t, (s, e) in enumerate(offsets) if not special[t] and e > s]
            probs = softmax(logits[real], temperature)
            values, field_conf[i] = decode_fields(text, probs, [offsets[t] for t in real], self.fields)
            labels.append(fields_json(values, self.fields))
        confidence = field_conf.min(axis=1) if self.fields else np.ones(len(texts), dtype=np.float32)
        return labels, confidence.astype(np.float32), field_conf


class TritonPythonModel:
    """The Triton entry point; requests of one dynamic batch share the onnxruntime runs."""

    def initialize(self, args):
        global pb_utils
        import triton_python_backend_utils as pb_utils

        version_dir = Path(args["model_repository"]) / args["model_version"]
        gpu = args.get("model_instance_kind") == "GPU"
        config = json.loads(args.get("model_config") or "{}")
        self.extractor = TextExtractor(version_dir, use_gpu=gpu, device_id=args.get("model_instance_device_id", 0),
                                       threads=0 if gpu else config_count(config, "intra_op_threads", 0),
                                       parallel=1 if gpu else config_count(config, "parallel_runs", 1))

    def execute(self, requests):
        texts, sizes = [], []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            decoded = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in values]
            texts.extend(decoded)
            sizes.append(len(decoded))
        labels, confidences, field_conf = self.extractor.extract(texts)
        responses, start = [], 0
        for size in sizes:
            end = start + size
            label = np.array([[x.encode("utf-8")] for x in labels[start:end]], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("LABEL", label.reshape(size, 1)),
                pb_utils.Tensor("CONFIDENCE", confidences[start:end].reshape(size, 1)),
                pb_utils.Tensor("FIELD_CONFIDENCE", field_conf[start:end]),
            ]))
            start = end
        return responses

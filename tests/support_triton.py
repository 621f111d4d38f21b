"""A tiny graduate-contract model for tests that need Triton before (or without) a trained one.

It classifies by keyword: the first configured keyword found in the text gives the label with
confidence 0.95; no keyword → the default label with confidence 0.30 (so a threshold above 0.3
makes it fall back). Same inputs and outputs as every trained graduate model.
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import tritonclient.http as httpclient

CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 64
dynamic_batching {{ max_queue_delay_microseconds: 0 }}
input [ {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [
  {{ name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "CONFIDENCE" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "PROBS" data_type: TYPE_FP32 dims: [ -1 ] }}
]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

MODEL_PY = '''
import json, os
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        here = os.path.dirname(__file__)
        spec = json.load(open(os.path.join(here, "keywords.json")))
        self.keywords = spec["keywords"]
        self.default = spec["default"]
        self.labels = spec["labels"]

    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            labels, confs, probs = [], [], []
            for t in texts:
                t = t.decode("utf-8").lower()
                label, conf = self.default, 0.30
                for kw, lab in self.keywords.items():
                    if kw in t:
                        label, conf = lab, 0.95
                        break
                labels.append([label.encode()])
                confs.append([conf])
                p = [0.0] * len(self.labels)
                p[self.labels.index(label)] = conf
                probs.append(p)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("LABEL", np.array(labels, dtype=np.object_)),
                pb_utils.Tensor("CONFIDENCE", np.array(confs, dtype=np.float32)),
                pb_utils.Tensor("PROBS", np.array(probs, dtype=np.float32)),
            ]))
        return responses
'''


def write_keyword_model(repository: Path, keywords: dict[str, str], default: str, name: str | None = None,
                        version: int = 1, config: str | None = None) -> str:
    """Write the model into a Triton repository (with `config` as its config.pbtxt, if given); returns its name."""
    name = name or f"kw-{uuid.uuid4().hex[:8]}"
    folder = repository / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config or CONFIG.format(name=name))
    (folder / str(version) / "model.py").write_text(MODEL_PY)
    labels = sorted(set(keywords.values()) | {default})
    (folder / str(version) / "keywords.json").write_text(json.dumps({"keywords": keywords, "default": default, "labels": labels}))
    return name


def load_model(http_url: str, name: str, timeout: float = 60.0) -> None:
    client = httpclient.InferenceServerClient(http_url)
    try:
        client.load_model(name)
        deadline = time.monotonic() + timeout
        while not client.is_model_ready(name):
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {name} not ready after {timeout} s")
            time.sleep(0.2)
    finally:
        client.close()


def unload_and_remove(http_url: str, repository: Path, name: str) -> None:
    client = httpclient.InferenceServerClient(http_url)
    try:
        client.unload_model(name)
    except Exception:
        pass
    finally:
        client.close()
    shutil.rmtree(repository / name, ignore_errors=True)

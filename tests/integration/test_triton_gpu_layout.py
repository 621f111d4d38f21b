"""The GPU layout's Python front (trainer/triton_model_gpu.py) in the real Triton: its config
loads, and version N of the front asks version N of `<model>_onnx` through BLS.

The local tritonserver (the nvidia-pytriton wheel's) carries only the Python backend, so here
`<model>_onnx` is a Python-backend stand-in running the same model.onnx with onnxruntime, with the
graph's inputs and outputs; on a GPU deployment it is Triton's onnxruntime backend (the config that
lay_out_version writes, which tests/unit/test_triton_layout.py parses). The front runs with one
instance instead of four (2 shared cores here).
"""
from __future__ import annotations

import os
import shutil
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx import numpy_helper

from services.common.settings import REPO_ROOT
from tests.unit.test_trainer_triton_model import LABELS, FakeHFTokenizer, counting_onnx
from trainer import triton_repo
from trainer.triton_model import TextClassifier

pytestmark = pytest.mark.integration

STAND_IN_PY = textwrap.dedent('''
    from pathlib import Path

    import onnxruntime as ort
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.inputs = [i.name for i in self.session.get_inputs()]

        def execute(self, requests):
            out = []
            for request in requests:
                feed = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
                logits = self.session.run(["logits"], feed)[0]
                out.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("logits", logits)]))
            return out
''')


def scaled_onnx(src: Path, dest: Path, factor: float) -> Path:
    """The counting graph with its logits scaled by `factor` (another model version's answers)."""
    model = onnx.load(str(src))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "two":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.array(2.0 * factor, dtype=np.float32), "two"))
    onnx.save(model, str(dest))
    return dest


@pytest.fixture
def repository() -> Path:
    return Path(os.environ.get("GRADUATE_MODEL_REPOSITORY", REPO_ROOT / "var" / "model-repository"))


def test_front_version_n_runs_graph_version_n(repository: Path, tmp_path: Path) -> None:
    url = os.environ.get("GRADUATE_TRITON_HTTP_URL", "127.0.0.1:8000")
    name = f"gpu-layout-{uuid.uuid4().hex[:8]}"
    graph = counting_onnx(tmp_path / "v1.onnx")
    stages = [triton_repo.stage_version(tmp_path / f"stage{v}", onnx_file, FakeHFTokenizer(), LABELS, 2.0,
                                        {"max_length": 8, "task": "t"})
              for v, onnx_file in ((1, graph), (2, scaled_onnx(graph, tmp_path / "v2.onnx", 3.0)))]
    for stage in stages:
        triton_repo.lay_out_version(stage, repository, name, "gpu")
    front_cfg = repository / name / "config.pbtxt"
    front_cfg.write_text(front_cfg.read_text().replace(f"count: {triton_repo.FRONT_INSTANCES}", "count: 1"))
    graph_cfg = repository / f"{name}_onnx" / "config.pbtxt"
    graph_cfg.write_text(graph_cfg.read_text().replace('platform: "onnxruntime_onnx"', 'backend: "python"')
                         .replace("KIND_GPU", "KIND_CPU").replace(f"count: {triton_repo.ONNX_GPU_INSTANCES}", "count: 1"))
    for v in (1, 2):
        (repository / f"{name}_onnx" / str(v) / "model.py").write_text(STAND_IN_PY)
    client = httpclient.InferenceServerClient(url=url)
    try:
        triton_repo.load_model(url, name, 2, timeout_s=180)
        assert client.is_model_ready(f"{name}_onnx", "1") and client.is_model_ready(f"{name}_onnx", "2")
        assert client.is_model_ready(name, "1")  # latest 2: both versions answer side by side
        texts = ["a a b", "c", "b b c c", "a"]
        for version, stage in ((1, stages[0]), (2, stages[1])):
            labels, confidences, probs = triton_repo.classify(url, name, version, texts)
            want_labels, want_conf, want_probs = TextClassifier(stage).classify(texts)
            assert labels == want_labels
            np.testing.assert_allclose(probs, want_probs, atol=1e-6)
            np.testing.assert_allclose(confidences, want_conf, atol=1e-6)
        v1 = triton_repo.classify(url, name, 1, ["a a b"])[2]
        v2 = triton_repo.classify(url, name, 2, ["a a b"])[2]
        assert not np.allclose(v1, v2)  # the graphs differ: each front version ran its own
    finally:
        for model in (name, f"{name}_onnx"):
            try:
                client.unload_model(model)
            except Exception:  # noqa: BLE001 - never loaded
                pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (client.is_model_ready(name) or client.is_model_ready(f"{name}_onnx")):
            time.sleep(0.5)
        client.close()
        shutil.rmtree(repository / name, ignore_errors=True)
        shutil.rmtree(repository / f"{name}_onnx", ignore_errors=True)

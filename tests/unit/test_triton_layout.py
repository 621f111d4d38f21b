"""The Triton model repository for CPU and GPU serving, from one function (trainer/triton_repo.py
lay_out_version), and the GPU layout's Python front (trainer/triton_model_gpu.py) without a server.

No GPU is lent to this project's machines: the GPU layout is checked here by its configs (parsed
with Triton's own ModelConfig protobuf, so a misspelt field fails) and by running the front against
a stand-in for Triton's BLS call that runs the same ONNX file with onnxruntime on the CPU.
"""
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tests.unit.test_trainer_triton_model import LABELS, FakeHFTokenizer, _Tensor, counting_onnx
from trainer import triton_repo
from trainer.triton_model import TextClassifier
from trainer.triton_model_gpu import TritonPythonModel


def parse(config: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture
def stage(tmp_path: Path) -> Path:
    return triton_repo.stage_version(tmp_path / "stage", counting_onnx(tmp_path / "m.onnx"), FakeHFTokenizer(),
                                     LABELS, 2.0, {"max_length": 4, "task": "t"})


def test_cpu_layout_is_one_python_model_with_every_version_served(stage: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    version, target = triton_repo.lay_out_version(stage, repo, "m", "cpu")
    cfg = parse(repo / "m" / "config.pbtxt")
    assert (version, target) == (1, repo / "m" / "1")
    assert cfg.backend == "python" and cfg.max_batch_size == 64
    assert cfg.version_policy.WhichOneof("policy_choice") == "all"
    assert [(g.kind, g.count) for g in cfg.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_CPU, triton_repo.CPU_INSTANCES)]
    assert cfg.parameters["intra_op_threads"].string_value == "1"
    assert cfg.parameters["parallel_runs"].string_value == "auto"
    assert sorted(p.name for p in target.iterdir()) == sorted(triton_repo.VERSION_FILES)
    assert not (repo / "m_onnx").exists()


def test_gpu_layout_puts_the_graph_on_the_onnxruntime_backend_behind_a_python_front(stage: Path,
                                                                                  tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    version, target = triton_repo.lay_out_version(stage, repo, "m", "gpu")
    again, _ = triton_repo.lay_out_version(stage, repo, "m", "gpu")
    assert (version, again) == (1, 2)

    front, graph = parse(repo / "m" / "config.pbtxt"), parse(repo / "m_onnx" / "config.pbtxt")
    assert front.backend == "python" and front.name == "m"
    assert [i.name for i in front.input] == ["TEXT"] and [o.name for o in front.output] == ["LABEL", "CONFIDENCE", "PROBS"]
    assert [(g.kind, g.count) for g in front.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_CPU, triton_repo.FRONT_INSTANCES)]
    assert graph.platform == "onnxruntime_onnx" and graph.name == "m_onnx" and graph.max_batch_size == 64
    assert [(g.kind, g.count) for g in graph.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_GPU, triton_repo.ONNX_GPU_INSTANCES)]
    assert list(graph.dynamic_batching.preferred_batch_size) == [16, 32, 64]
    for cfg in (front, graph):  # no delay for a lone request; batches form from what queues under load
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 0
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [(o.name, list(o.dims)) for o in graph.output] == [("logits", [len(LABELS)])]
    for cfg in (front, graph):
        assert cfg.version_policy.latest.num_versions == 2

    assert sorted(p.name for p in target.iterdir()) == ["calibration.json", "labels.json", "model.py",
                                                        "tokenizer.json", "version.json"]
    assert (repo / "m_onnx" / "1" / "model.onnx").read_bytes() == (stage / "model.onnx").read_bytes()
    meta = json.loads((target / "version.json").read_text())
    assert meta["layout"] == "gpu" and meta["version"] == 1 and meta["onnx_output"] == "logits"

    triton_repo.remove_version(repo, "m", 2)
    assert triton_repo.existing_versions(repo / "m") == [1] == triton_repo.existing_versions(repo / "m_onnx")


def test_install_version_takes_the_gpu_layout_for_a_classifier_on_a_gpu(stage: Path, tmp_path: Path) -> None:
    triton_repo.install_version(stage, tmp_path / "gpu", "m", gpu=True)
    triton_repo.install_version(stage, tmp_path / "cpu", "m", gpu=False)
    assert (tmp_path / "gpu" / "m_onnx").is_dir() and not (tmp_path / "cpu" / "m_onnx").exists()
    assert (tmp_path / "cpu" / "m" / "config.pbtxt").read_text() == triton_repo.config_pbtxt("m")
    with pytest.raises(ValueError):
        triton_repo.lay_out_version(stage, tmp_path, "m", "tpu")


def test_other_task_kinds_keep_the_python_backend_on_the_gpu(stage: Path, tmp_path: Path) -> None:
    outputs = (("JSON", "TYPE_STRING", "1"), ("CONFIDENCE", "TYPE_FP32", "1"))
    triton_repo.install_version(stage, tmp_path, "x", gpu=True, outputs=outputs)
    cfg = parse(tmp_path / "x" / "config.pbtxt")
    assert cfg.backend == "python" and cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert not (tmp_path / "x_onnx").exists()


@pytest.fixture
def bls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """triton_python_backend_utils with a BLS call that runs <model>_onnx/<version>/model.onnx."""
    state = types.SimpleNamespace(calls=[], repo=tmp_path / "repo")
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor
    module.InferenceResponse = lambda output_tensors, error=None: {t.name: t.data for t in output_tensors}
    module.get_input_tensor_by_name = lambda request, name: request[name]
    module.get_output_tensor_by_name = lambda response, name: response.outputs[name]

    class Answer:
        def __init__(self, outputs):
            self.outputs = outputs

        def has_error(self):
            return False

    class InferenceRequest:
        def __init__(self, model_name, model_version, requested_output_names, inputs):
            self.model, self.version, self.names, self.inputs = model_name, model_version, requested_output_names, inputs

        def exec(self):
            state.calls.append((self.model, self.version, self.inputs[0].data.shape))
            session = ort.InferenceSession(str(state.repo / self.model / str(self.version) / "model.onnx"))
            out = session.run(self.names, {t.name: t.data for t in self.inputs})
            return Answer({n: _Tensor(n, v) for n, v in zip(self.names, out)})

    module.InferenceRequest = InferenceRequest
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    return state


def test_gpu_front_answers_as_the_cpu_model_does(stage: Path, tmp_path: Path, bls) -> None:
    version, _ = triton_repo.lay_out_version(stage, bls.repo, "m", "gpu")
    front = TritonPythonModel()
    front.initialize({"model_repository": str(bls.repo / "m"), "model_version": str(version), "model_name": "m"})
    texts = [b"a a b", b"c", b"b b", "a".encode()]
    requests = [{"TEXT": _Tensor("TEXT", np.array([[t] for t in texts[:2]], dtype=np.object_))},
                {"TEXT": _Tensor("TEXT", np.array([[t] for t in texts[2:]], dtype=np.object_))}]

    first, second = front.execute(requests)

    assert bls.calls == [("m_onnx", 1, (4, 3))]  # one graph run for the whole dynamic batch, same version
    labels, confidences, probs = TextClassifier(stage).classify([t.decode() for t in texts])
    got = [v.decode() for r in (first, second) for v in r["LABEL"].reshape(-1)]
    assert got == labels == ["alpha", "gamma", "beta", "alpha"]
    np.testing.assert_allclose(np.vstack([first["PROBS"], second["PROBS"]]), probs, rtol=1e-6)
    np.testing.assert_allclose(np.concatenate([first["CONFIDENCE"], second["CONFIDENCE"]]).reshape(-1), confidences)

"""The served code (trainer/triton_model.py) and the repository layout, without a Triton server.

A tiny ONNX graph stands in for the encoder: the logit of label j is 2 x (count of token j+2),
so every answer is known by hand. The Triton entry point runs against a stand-in for the
`triton_python_backend_utils` module (only the server provides the real one; the integration
tests run this file inside the real Triton).
"""
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tokenizers import Tokenizer, models, pre_tokenizers

from trainer import triton_repo
from trainer.calibrate import softmax
from trainer.triton_model import TextClassifier, TritonPythonModel, intra_op_threads, parallel_runs

LABELS = ["alpha", "beta", "gamma"]
VOCAB = {"[PAD]": 0, "[UNK]": 1, "a": 2, "b": 3, "c": 4}


def counting_onnx(path: Path) -> Path:
    seq = ["batch", "sequence"]
    nodes = [
        helper.make_node("Unsqueeze", ["input_ids", "axis2"], ["ids3"]),
        helper.make_node("Equal", ["ids3", "class_ids"], ["hit"]),
        helper.make_node("Cast", ["hit"], ["hit_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["attention_mask", "axis2"], ["mask3"]),
        helper.make_node("Cast", ["mask3"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["hit_f", "mask_f"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["counts"], keepdims=0),
        helper.make_node("Mul", ["counts", "two"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "counting",
        inputs=[helper.make_tensor_value_info(n, TensorProto.INT64, seq)
                for n in ("input_ids", "attention_mask", "token_type_ids")],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])],
        initializer=[helper.make_tensor("axis2", TensorProto.INT64, [1], [2]),
                     helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
                     helper.make_tensor("class_ids", TensorProto.INT64, [len(LABELS)], [2, 3, 4]),
                     helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


class FakeHFTokenizer:
    """What stage_version reads from a transformers fast tokenizer."""

    pad_token_id, pad_token = 0, "[PAD]"

    def __init__(self) -> None:
        self.backend_tokenizer = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
        self.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()


@pytest.fixture
def version_dir(tmp_path: Path) -> Path:
    return triton_repo.stage_version(tmp_path / "stage", counting_onnx(tmp_path / "m.onnx"), FakeHFTokenizer(),
                                     LABELS, 2.0, {"max_length": 4, "task": "t"})


def test_staged_folder_holds_every_served_file(version_dir: Path) -> None:
    assert sorted(p.name for p in version_dir.iterdir()) == sorted(triton_repo.VERSION_FILES)
    assert json.loads((version_dir / "labels.json").read_text()) == LABELS
    assert json.loads((version_dir / "calibration.json").read_text())["temperature"] == 2.0
    meta = json.loads((version_dir / "version.json").read_text())
    assert (meta["max_length"], meta["pad_id"], meta["pad_token"]) == (4, 0, "[PAD]")


def test_classifier_applies_temperature_and_label_order(version_dir: Path) -> None:
    texts = ["a a b", "c", "b b b c", "zzz"]
    expected_logits = np.array([[4, 2, 0], [0, 0, 2], [0, 6, 2], [0, 0, 0]], dtype=np.float32)
    clf = TextClassifier(version_dir)

    np.testing.assert_allclose(clf.logits(texts), expected_logits)
    labels, confidence, probs = clf.classify(texts)

    np.testing.assert_allclose(probs, softmax(expected_logits, 2.0), rtol=1e-6)
    assert labels[:3] == ["alpha", "gamma", "beta"]
    assert confidence.dtype == np.float32 and probs.dtype == np.float32
    np.testing.assert_allclose(confidence, probs.max(axis=1))


def test_classifier_truncates_to_max_length(version_dir: Path) -> None:
    # max_length 4: the fifth token ("c") is cut, so "a a a a c" counts no "c"
    np.testing.assert_allclose(TextClassifier(version_dir).logits(["a a a a c"]), [[8, 0, 0]])


def test_classifier_chunks_long_lists_in_order(version_dir: Path) -> None:
    texts = [("a " * (i % 3 + 1)) + "b" * (i % 2) for i in range(150)]
    one_by_one = np.concatenate([TextClassifier(version_dir).logits([t]) for t in texts[:10]])
    np.testing.assert_allclose(TextClassifier(version_dir).logits(texts)[:10], one_by_one)


class _Tensor:
    def __init__(self, name: str, data: np.ndarray) -> None:
        self.name, self.data = name, data

    def as_numpy(self) -> np.ndarray:
        return self.data


@pytest.fixture
def pb_utils(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor
    module.InferenceResponse = lambda output_tensors: {t.name: t.data for t in output_tensors}
    module.get_input_tensor_by_name = lambda request, name: request[name]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    return module


def test_triton_entry_point_answers_each_request_of_a_batch(version_dir: Path, pb_utils) -> None:
    model = TritonPythonModel()
    model.initialize({"model_repository": str(version_dir.parent), "model_version": version_dir.name,
                      "model_instance_kind": "CPU"})
    requests = [{"TEXT": _Tensor("TEXT", np.array([[b"a a b"], [b"c"]], dtype=np.object_))},
                {"TEXT": _Tensor("TEXT", np.array([["b b".encode()]], dtype=np.object_))}]

    first, second = model.execute(requests)

    assert first["LABEL"].shape == (2, 1) and first["CONFIDENCE"].shape == (2, 1) and first["PROBS"].shape == (2, 3)
    assert [v.decode() for v in first["LABEL"].reshape(-1)] == ["alpha", "gamma"]
    assert [v.decode() for v in second["LABEL"].reshape(-1)] == ["beta"]
    np.testing.assert_allclose(second["PROBS"], softmax(np.array([[0, 4, 0]], dtype=np.float32), 2.0), rtol=1e-6)


def test_config_is_the_contract() -> None:
    cpu, gpu = triton_repo.config_pbtxt("m-1"), triton_repo.config_pbtxt("m-1", gpu=True)
    for line in ('name: "m-1"', 'backend: "python"', "max_batch_size: 64",
                 "dynamic_batching { max_queue_delay_microseconds: 0 }",
                 '{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }',
                 '{ name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] }',
                 '{ name: "CONFIDENCE" data_type: TYPE_FP32 dims: [ 1 ] }',
                 '{ name: "PROBS" data_type: TYPE_FP32 dims: [ -1 ] }'):
        assert line in cpu
    assert f"kind: KIND_CPU count: {triton_repo.CPU_INSTANCES}" in cpu and "kind: KIND_GPU count: 1" in gpu
    assert 'parameters { key: "intra_op_threads" value { string_value: "1" } }' in cpu
    assert 'parameters { key: "parallel_runs" value { string_value: "auto" } }' in cpu


def test_instances_split_the_cores_between_them_unless_told_otherwise() -> None:
    cores = len(os.sched_getaffinity(0))

    def config(count: int, threads: str | None, kind: str = "KIND_CPU") -> dict:
        parameters = {"intra_op_threads": {"string_value": threads}} if threads is not None else {}
        return {"instance_group": [{"kind": kind, "count": count}], "parameters": parameters}

    assert intra_op_threads(config(2, "auto")) == max(1, cores // 2)
    assert intra_op_threads(config(1, "auto")) == cores
    assert intra_op_threads(config(4 * cores, "auto")) == 1  # never below one thread
    assert intra_op_threads(config(2, "3")) == 3
    assert intra_op_threads(config(2, None)) == 0 == intra_op_threads({})  # onnxruntime's default


def test_parallel_runs_are_one_per_core_of_each_instance_unless_told_otherwise() -> None:
    cores = len(os.sched_getaffinity(0))

    def config(count: int, runs: str | None) -> dict:
        parameters = {"parallel_runs": {"string_value": runs}} if runs is not None else {}
        return {"instance_group": [{"kind": "KIND_CPU", "count": count}], "parameters": parameters}

    assert parallel_runs(config(1, "auto")) == cores
    assert parallel_runs(config(2, "auto")) == max(1, cores // 2)
    assert parallel_runs(config(4 * cores, "auto")) == 1
    assert parallel_runs(config(1, "3")) == 3
    assert parallel_runs(config(1, None)) == 1 == parallel_runs({})  # a batch in one call


def test_a_batch_split_over_concurrent_runs_answers_as_one_run(version_dir: Path) -> None:
    texts = [("a " * (i % 3 + 1)) + "b " * (i % 4) + "c" * (i % 2) for i in range(150)]
    one = TextClassifier(version_dir, threads=1)
    split = TextClassifier(version_dir, threads=1, parallel=3)
    np.testing.assert_allclose(split.logits(texts), one.logits(texts))
    np.testing.assert_allclose(split.logits(texts[:2]), one.logits(texts[:2]))  # fewer texts than runs
    np.testing.assert_allclose(split.logits(texts[:1]), one.logits(texts[:1]))  # a lone text: the caller's thread
    labels, confidence, probs = split.classify(texts)
    assert (labels, confidence.tolist()) == (one.classify(texts)[0], one.classify(texts)[1].tolist())


def test_the_served_instance_runs_onnxruntime_on_its_share_of_the_cores(version_dir: Path, pb_utils) -> None:
    model = TritonPythonModel()
    model.initialize({"model_repository": str(version_dir.parent), "model_version": version_dir.name,
                      "model_instance_kind": "CPU", "model_config": json.dumps(
                          {"instance_group": [{"kind": "KIND_CPU", "count": 1}],
                           "parameters": {"intra_op_threads": {"string_value": "1"},
                                          "parallel_runs": {"string_value": "2"}}})})
    assert model.classifier.session.get_session_options().intra_op_num_threads == 1
    assert model.classifier.parallel == 2


def test_install_numbers_versions_and_stamps_them(version_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "m" / "3").mkdir(parents=True)
    (repo / "m" / "notes").mkdir()

    version, target = triton_repo.install_version(version_dir, repo, "m")
    again, _ = triton_repo.install_version(version_dir, repo, "m")

    assert (version, again) == (4, 5)
    assert target == repo / "m" / "4"
    assert json.loads((target / "version.json").read_text())["version"] == 4
    assert (repo / "m" / "config.pbtxt").read_text() == triton_repo.config_pbtxt("m")
    assert triton_repo.existing_versions(repo / "m") == [3, 4, 5]
    triton_repo.remove_version(repo, "m", 5)
    assert triton_repo.existing_versions(repo / "m") == [3, 4]

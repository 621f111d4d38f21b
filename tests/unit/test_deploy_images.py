"""The images: multi-stage, hash-locked, a slim service image without torch, bases named in full
and pinned by digest where a release sets it, every third-party image fully qualified."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
LOCKS = ROOT / "deploy" / "docker"


def pins(text: str) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.MULTILINE)}


def test_dockerfile_is_multi_stage_from_a_digest_pinnable_fully_qualified_base():
    assert re.search(r"^ARG PYTHON_IMAGE=docker\.io/library/python:3\.11-slim-\w+$", DOCKERFILE, re.MULTILINE)
    stages = re.findall(r"^FROM (\S+) AS (\w+)$", DOCKERFILE, re.MULTILINE)
    assert stages[0] == ("${PYTHON_IMAGE}${PYTHON_DIGEST:+@${PYTHON_DIGEST}}", "python")
    assert [name for _, name in stages] == ["python", "build", "runtime"]
    runtime = DOCKERFILE[DOCKERFILE.index("AS runtime"):]
    assert "COPY --from=build /opt/venv /opt/venv" in runtime and "pip install" not in runtime
    users = re.findall(r"^USER (\S+)$", runtime, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["graduate"\]$', runtime, re.MULTILINE)


def test_dockerfile_installs_only_hash_locked_packages_and_no_editable_code():
    installs = re.findall(r"pip install[^;\n]*", DOCKERFILE)
    assert any("--require-hashes" in i for i in installs)
    assert all("--require-hashes" in i or "--no-deps /tmp/wheels/" in i for i in installs), installs
    assert not re.search(r"pip install[^\n]*(-e |--editable)", DOCKERFILE)
    for lock in ("service.lock", "trainer-cpu.lock", "trainer-gpu.lock"):
        assert lock in DOCKERFILE


@pytest.mark.parametrize("lock", ["service.lock", "trainer-cpu.lock", "trainer-gpu.lock"])
def test_image_locks_hash_every_package_at_the_dev_locks_versions(lock):
    text = (LOCKS / lock).read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9_.\-]+==)", text.split("\n", 2)[2])
    assert entries and all("--hash=sha256:" in e for e in entries if "==" in e)
    dev = pins((ROOT / "requirements.lock").read_text())
    drift = {n: (v, dev[n]) for n, v in pins(text).items() if n in dev and dev[n] != v}
    assert not drift, f"{lock} disagrees with requirements.lock: run deploy/docker/lock.sh"


def test_the_service_image_has_no_torch_and_the_trainer_images_do():
    service = pins((LOCKS / "service.lock").read_text())
    cpu = pins((LOCKS / "trainer-cpu.lock").read_text())
    gpu = pins((LOCKS / "trainer-gpu.lock").read_text())
    assert not {"torch", "transformers", "onnxruntime", "onnxruntime-gpu"} & service.keys()
    assert {"fastapi", "faust-streaming", "tritonclient"} <= service.keys()
    assert {"torch", "transformers", "onnxruntime"} <= cpu.keys() and "onnxruntime-gpu" not in cpu
    assert {"torch", "onnxruntime-gpu"} <= gpu.keys() and "onnxruntime" not in gpu


def test_triton_image_is_pinnable_by_digest_and_matches_the_trainers_onnxruntime_gpu():
    text = (ROOT / "deploy" / "triton" / "Dockerfile").read_text()
    assert "FROM ${TRITON_IMAGE}${TRITON_DIGEST:+@${TRITON_DIGEST}}" in text
    assert re.search(r"^ARG TRITON_IMAGE=nvcr\.io/nvidia/tritonserver:\S+$", text, re.MULTILINE)
    overlay = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]["triton"]["build"]["args"]
    assert overlay["ONNXRUNTIME_VERSION"] == pins((LOCKS / "trainer-gpu.lock").read_text())["onnxruntime-gpu"]


def test_third_party_images_are_fully_qualified():
    env = dict(line.split("=", 1) for line in (ROOT / "deploy" / "compose.env").read_text().splitlines()
               if line and not line.startswith("#"))
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name, svc in compose.items():
        image = svc.get("image", "")
        if "GRADUATE_IMAGE" in image:
            continue  # built here; the k8s overlays name the registry
        resolved = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), image)
        registry = resolved.split("/", 1)[0]
        assert "." in registry and "/" in resolved, f"{name}: {resolved} does not name its registry"

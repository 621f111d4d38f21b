"""docker-compose files, their env file and the Dockerfile."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.validate import tool

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "docker-compose.yml"
GPU = ROOT / "docker-compose.gpu.yml"
FRONTIER = ROOT / "docker-compose.frontier.yml"
ENV_FILE = ROOT / "deploy" / "compose.env"
WORKERS = ("profiler", "curator", "shadow", "judge", "controller", "trainer")


def _compose_command() -> list[str] | None:
    """`docker compose` where the plugin is installed, else composecheck (compose-go, make validators)."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                 check=False).returncode == 0:
        return ["docker", "compose"]
    return [composecheck] if (composecheck := tool("composecheck")) else None


needs_compose = pytest.mark.skipif(_compose_command() is None, reason="neither the docker compose plugin nor "
                                   "composecheck is installed here (make validators)")


def _env_file() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_FILE.read_text().splitlines() if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


def _config(*files: Path, env: dict[str, str] | None = None, profiles: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    args = [*_compose_command(), "--env-file", str(ENV_FILE)]
    for f in files:
        args += ["-f", str(f)]
    for p in profiles:
        args += ["--profile", p]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GRADUATE_", "COMPOSE_"))}
    if args[0] == "docker":
        args.append("config")
    return subprocess.run(args, check=False, capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**clean, **(env or {})})


@needs_compose
def test_compose_accepts_base_and_gpu_overlay():
    out = _config(BASE, GPU, profiles=("jobs", "observability"))
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    devices = services["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["trainer"]["build"]["args"] | {"PYTHON_DIGEST": ""} == {"IMAGE": "trainer", "VARIANT": "gpu",
                                                                          "PYTHON_DIGEST": ""}
    assert services["triton"]["build"]["args"]["ONNXRUNTIME"] == "onnxruntime-gpu"
    for name in ("trainer", "train"):  # lays models out for the GPU (trainer/triton_repo.py)
        assert services[name]["environment"]["GRADUATE_TRAIN_DEVICE"] == "cuda"


@needs_compose
def test_compose_base_alone_runs_triton_on_the_cpu():
    out = _config(BASE)
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert "deploy" not in services["triton"]
    assert {"kafka", "topics-init", "router", "frontier-sim", "triton", *WORKERS} <= set(services)


@needs_compose
def test_real_frontier_overlay_fails_fast_without_its_settings():
    out = _config(BASE, FRONTIER)
    assert out.returncode != 0
    assert "GRADUATE_FRONTIER_" in out.stderr
    ok = _config(BASE, FRONTIER, env={"GRADUATE_FRONTIER_BASE_URL": "https://frontier.invalid/v1",
                                      "GRADUATE_FRONTIER_API_KEY": "k"})
    assert ok.returncode == 0, ok.stderr
    services = yaml.safe_load(ok.stdout)["services"]
    assert "frontier-sim" not in services  # only with --profile simulator
    assert services["router"]["environment"]["GRADUATE_FRONTIER_BASE_URL"] == "https://frontier.invalid/v1"


@needs_compose
def test_compose_validator_refuses_a_misspelt_field(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(BASE.read_text().replace("healthcheck:", "healthchek:", 1))
    out = _config(broken)
    assert out.returncode != 0
    assert "healthchek" in out.stderr


def test_startup_order_is_gated_by_health_and_topics():
    services = yaml.safe_load(BASE.read_text())["services"]
    assert services["topics-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["topics-init"]["command"] == ["topics", "ensure"]
    for name in (*WORKERS, "router"):
        deps = services[name]["depends_on"]
        assert deps["topics-init"]["condition"] == "service_completed_successfully", name
    for name in WORKERS[:-1]:  # the faust workers: their web server must listen beyond loopback
        assert services[name]["environment"]["GRADUATE_WORKER_WEB_HOST"] == "0.0.0.0", name
    for name in ("shadow", "trainer"):
        assert services[name]["depends_on"]["triton"]["condition"] == "service_healthy"
    for name in ("kafka", "triton", "router", "frontier-sim"):
        assert "healthcheck" in services[name], name


def test_commands_are_the_services_own():
    services = yaml.safe_load(BASE.read_text())["services"]
    assert services["router"]["command"] == ["serve", "router", "--host", "0.0.0.0", "--port", "8080"]
    assert services["frontier-sim"]["command"] == ["frontier-sim", "--host", "0.0.0.0", "--port", "8090"]
    for name in WORKERS:
        assert services[name]["command"] == ["worker", name, "--web-port", "6066"]
    assert "/v2/health/ready" in " ".join(services["triton"]["healthcheck"]["test"])


def test_compose_defaults_match_the_env_file():
    """Every ${VAR:-default} in a compose file defaults to deploy/compose.env's value."""
    env = _env_file()
    for path in (BASE, GPU, FRONTIER):
        for var, default in re.findall(r"\$\{([A-Z_]+):-([^}]*)\}", path.read_text()):
            assert var in env, f"{path.name}: {var} is not in {ENV_FILE.name}"
            assert env[var] == default, f"{path.name}: {var} defaults to {default!r}, {ENV_FILE.name} says {env[var]!r}"


def test_image_requirements_swap_onnxruntime_for_the_gpu_variant():
    from deploy.image_requirements import image_requirements
    pyproject = ROOT / "pyproject.toml"
    cpu = image_requirements(pyproject, "trainer", "cpu")
    gpu = image_requirements(pyproject, "trainer", "gpu")
    assert any(r.startswith("onnxruntime==") for r in cpu)
    assert not any(r.startswith("onnxruntime") for r in gpu)
    assert any(r.startswith("torch==") for r in gpu)
    assert not any(r.startswith("pytest") for r in cpu)  # no dev tools in the image
    assert not any(r.startswith("torch") for r in image_requirements(pyproject, "", "cpu"))
    with pytest.raises(SystemExit):
        image_requirements(pyproject, "", "tpu")

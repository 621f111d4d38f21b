"""Offline checks of the Kubernetes manifests: Kubernetes' own schemas and the CRDs' schemas.

Core kinds are checked with kubernetes-validate (strict: an unknown field is an error); the
KEDA and Strimzi kinds with the JSON schemas in deploy/k8s/crd-schemas/. Used by the unit tests.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path

import yaml

K8S_DIR = Path(__file__).resolve().parent / "k8s"
CRD_SCHEMAS = K8S_DIR / "crd-schemas"
K8S_VERSIONS = ("1.29.0", "1.37.0")  # oldest we support, newest the validator knows


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@cache
def crd_schema(api_version: str, kind: str) -> dict | None:
    path = CRD_SCHEMAS / f"{api_version.replace('/', '_')}_{kind.lower()}.json"
    return json.loads(path.read_text()) if path.exists() else None


def validate_manifest(doc: dict, k8s_version: str = K8S_VERSIONS[-1]) -> None:
    """Raise on an invalid manifest (jsonschema.ValidationError or kubernetes-validate's errors)."""
    import jsonschema
    import kubernetes_validate

    schema = crd_schema(doc.get("apiVersion", ""), doc.get("kind", ""))
    if schema is not None:
        jsonschema.Draft202012Validator(schema).validate(doc)
        return
    kubernetes_validate.validate(doc, k8s_version, strict=True)


def kustomization_resources(folder: Path) -> list[Path]:
    """Every resource, patch file and env file a kustomization.yaml names (whether or not it exists)."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    named = list(k.get("resources", []))
    named += [p["path"] for p in k.get("patches", []) if "path" in p]
    for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        named += gen.get("envs", []) + [f.split("=", 1)[-1] for f in gen.get("files", [])]
    return [folder / n for n in named]


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def kustomize_build(folder: Path) -> list[dict]:
    cmd = kustomize_command()
    if cmd is None:
        raise RuntimeError("neither kustomize nor kubectl is installed")
    out = subprocess.run([*cmd, str(folder)], check=False, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} {folder} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]

"""Offline checks of the manifests, used by the unit tests.

Two layers: in-process (kubernetes-validate for core kinds, jsonschema for the CRD kinds) for the
objects the generators build, and the real validators deploy/local/validators.sh installs in
GRADUATE_TOOLS_DIR — kubeconform over every file and every built overlay (strict: an unknown field
is an error), composecheck for the compose files, promtool for the rules.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import yaml

K8S_DIR = Path(__file__).resolve().parent / "k8s"
CRD_SCHEMAS = K8S_DIR / "crd-schemas"
K8S_VERSIONS = ("1.29.0", "1.37.0")  # oldest we support, newest the validator knows (validators.sh too)


def tools_dir() -> Path:
    return Path(os.environ.get("GRADUATE_TOOLS_DIR", Path.home() / ".cache" / "graduate" / "tools"))


def tool(name: str) -> str | None:
    """Path of a validator: the one validators.sh installed, else one on PATH."""
    installed = tools_dir() / "bin" / name
    return str(installed) if installed.is_file() and os.access(installed, os.X_OK) else shutil.which(name)


def kubeconform_missing() -> str | None:
    """Why kubeconform cannot run here, or None."""
    if tool("kubeconform") is None:
        return "kubeconform is not installed (make validators)"
    for v in K8S_VERSIONS:
        if not (tools_dir() / "k8s-schemas" / f"v{v}-local-strict" / "_definitions.json").exists():
            return f"the Kubernetes {v} schemas are not in {tools_dir()} (make validators)"
    if not (tools_dir() / "crd-schemas" / "keda.sh_v1alpha1_scaledjob.json").exists():
        return f"the KEDA / Prometheus operator schemas are not in {tools_dir()} (make validators)"
    return None


def kubeconform(paths: list[Path] | None = None, stdin: str | None = None,
                k8s_version: str = K8S_VERSIONS[-1]) -> list[dict]:
    """kubeconform -strict on files or on a YAML stream; every resource's result (status, kind, name, msg)."""
    crd_layout = "{{ .Group }}_{{ .ResourceAPIVersion }}_{{ .ResourceKind }}.json"
    cmd = [tool("kubeconform") or "kubeconform", "-strict", "-output", "json", "-verbose",
           "-kubernetes-version", k8s_version,
           "-schema-location", str(tools_dir() / "k8s-schemas")
           + "/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json",
           "-schema-location", f"{tools_dir() / 'crd-schemas'}/{crd_layout}",
           "-schema-location", f"{CRD_SCHEMAS}/{crd_layout}"]
    args = [str(p) for p in paths] if paths else ["-"]
    out = subprocess.run([*cmd, *args], input=stdin, check=False, capture_output=True, text=True, timeout=120)
    if not out.stdout.strip():
        raise RuntimeError(f"kubeconform printed nothing: {out.stderr}")
    return json.loads(out.stdout)["resources"]


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@cache
def crd_schema(api_version: str, kind: str) -> dict | None:
    """The hand-written schema (Strimzi), else the one `make validators` made from the operator's CRD."""
    name = f"{api_version.replace('/', '_')}_{kind.lower()}.json"
    for folder in (CRD_SCHEMAS, tools_dir() / "crd-schemas"):
        if (folder / name).exists():
            return json.loads((folder / name).read_text())
    return None


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

"""kubeconform over every manifest file and every built overlay, with Kubernetes', KEDA's, the
Prometheus operator's and Strimzi's schemas (installed by `make validators`)."""
from __future__ import annotations

from functools import cache

import pytest
import yaml

from deploy import manifests
from deploy.crd_schemas import schemas_of, strict
from deploy.validate import K8S_DIR, K8S_VERSIONS, kubeconform, kubeconform_missing, kustomize_build, kustomize_command
from deploy.workers import WORKERS

OVERLAYS = sorted(p for p in (K8S_DIR / "overlays").iterdir() if (p / "kustomization.yaml").exists())
FILES = sorted(p for p in K8S_DIR.rglob("*.yaml") if p.name != "kustomization.yaml")

needs_kubeconform = pytest.mark.skipif(kubeconform_missing() is not None, reason=str(kubeconform_missing()))
needs_kustomize = pytest.mark.skipif(kustomize_command() is None, reason="neither kustomize nor kubectl is installed")


def _failures(results: list[dict]) -> list[str]:
    return [f"{r.get('kind')} {r.get('name')} ({r['filename']}): {r['status']} {r.get('msg', '')}"
            for r in results if r["status"] != "statusValid"]


@cache
def _overlay_yaml(overlay) -> str:
    return yaml.safe_dump_all(kustomize_build(overlay))


@needs_kubeconform
@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_every_manifest_file_is_valid(k8s_version):
    """Patches in overlays are partial objects: they are checked once built (below)."""
    results = kubeconform(paths=[p for p in FILES if "overlays" not in p.parts], k8s_version=k8s_version)
    assert len(results) >= 30
    assert not _failures(results)


@needs_kubeconform
@needs_kustomize
@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.name for p in OVERLAYS])
def test_every_built_overlay_is_valid(overlay, k8s_version):
    results = kubeconform(stdin=_overlay_yaml(overlay), k8s_version=k8s_version)
    assert len(results) == len(kustomize_build(overlay))
    assert not _failures(results)


@needs_kubeconform
def test_kubeconform_refuses_unknown_fields_in_core_and_custom_kinds():
    deployment = manifests.worker_deployment(WORKERS[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    scaled = manifests.scaled_object(WORKERS[0])
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    results = {r["kind"]: r for r in kubeconform(stdin=yaml.safe_dump_all([deployment, scaled]))}
    assert {k: r["status"] for k, r in results.items()} == {"Deployment": "statusInvalid",
                                                             "ScaledObject": "statusInvalid"}
    assert "imagePullPolicyy" in results["Deployment"]["msg"]
    assert "maxReplicas" in results["ScaledObject"]["msg"]


def test_crd_schema_conversion_closes_objects_and_keeps_open_ones_open():
    crd = {"spec": {"group": "example.io", "names": {"kind": "Widget"}, "versions": [
        {"name": "v1", "served": True, "schema": {"openAPIV3Schema": {"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "port": {"x-kubernetes-int-or-string": True},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {}}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            }}}}}},
        {"name": "v0", "served": False, "schema": {"openAPIV3Schema": {}}},
    ]}}
    schemas = schemas_of(crd)
    assert list(schemas) == ["example.io_v1_widget.json"]
    spec = schemas["example.io_v1_widget.json"]["properties"]["spec"]
    assert spec["additionalProperties"] is False
    assert spec["properties"]["port"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert "additionalProperties" not in spec["properties"]["free"]
    assert spec["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    assert schemas["example.io_v1_widget.json"]["properties"]["kind"] == {"type": "string", "enum": ["Widget"]}
    original = {"type": "object", "properties": {"a": {}}}
    assert strict(original)["additionalProperties"] is False and "additionalProperties" not in original

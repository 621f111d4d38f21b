"""The Kubernetes manifests: generated files current, schemas valid offline, scaling within partitions."""
from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from deploy import manifests
from deploy.validate import (
    K8S_DIR,
    K8S_VERSIONS,
    kustomization_resources,
    kustomize_build,
    kustomize_command,
    load_docs,
    validate_manifest,
)
from deploy.workers import WORKERS
from services.common.catalog import CATALOG, spec_for

BASE = K8S_DIR / "base"
OVERLAYS = sorted(p for p in (K8S_DIR / "overlays").iterdir() if (p / "kustomization.yaml").exists())
KUSTOMIZATIONS = [BASE, BASE / "topics", BASE / "workers", *OVERLAYS]


def _resource_files() -> list[Path]:
    """Every YAML file some kustomization lists as a resource (patches are checked once built)."""
    files: set[Path] = set()
    for folder in KUSTOMIZATIONS:
        for path in kustomization_resources(folder):
            if path.is_file() and path.name != "kustomization.yaml" and path.suffix == ".yaml":
                k = (folder / "kustomization.yaml").read_text()
                if f"path: {path.name}" not in k:
                    files.add(path.resolve())
    return sorted(files)


def _ids(paths):
    return [str(p.relative_to(K8S_DIR)) for p in paths]


@pytest.mark.parametrize("render, folder", [
    (manifests.render_topics, BASE / "topics"),
    (manifests.render_workers, BASE / "workers"),
], ids=["topics", "workers"])
def test_generated_files_are_current(tmp_path, render, folder):
    manifests.write_files(render(), tmp_path)
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    committed = {p.name: p.read_text() for p in folder.glob("*.yaml")}
    assert committed.keys() == fresh.keys(), "run `graduate deploy topics` and `graduate deploy manifests`"
    stale = [n for n in fresh if fresh[n] != committed[n]]
    assert not stale, f"stale generated files {stale}: run `graduate deploy topics` / `graduate deploy manifests`"


def test_every_catalog_topic_has_a_kafkatopic():
    topics = {d["spec"]["topicName"]: d for p in (BASE / "topics").glob("graduate-*.yaml") for d in load_docs(p)}
    assert set(topics) == {s.name for s in CATALOG}
    for spec in CATALOG:
        t = topics[spec.name]["spec"]
        assert t["partitions"] == spec.partitions
        assert t["config"]["cleanup.policy"] == spec.cleanup_policy
        assert t["config"].get("retention.ms") == spec.config().get("retention.ms")


def test_scaled_objects_never_exceed_the_partitions_they_consume():
    found = 0
    for path in (BASE / "workers").glob("*.yaml"):
        for doc in load_docs(path):
            if doc["kind"] != "ScaledObject":
                continue
            found += 1
            trigger = doc["spec"]["triggers"][0]["metadata"]
            spec = spec_for(trigger["topic"])
            assert doc["spec"]["maxReplicaCount"] <= spec.partitions, doc["metadata"]["name"]
            assert doc["spec"]["minReplicaCount"] <= doc["spec"]["maxReplicaCount"]
            assert trigger["consumerGroup"] == doc["metadata"]["name"]  # graduate-<worker>
    assert found == len(WORKERS)


def test_the_cap_applies_when_a_worker_wants_more_than_its_partitions():
    from dataclasses import replace
    w = replace(WORKERS[0], max_replicas=10_000)
    assert manifests.scaled_object(w)["spec"]["maxReplicaCount"] == w.input.partitions


def test_each_worker_reads_the_topic_it_scales_on():
    """The scaling topic is one the catalog says the worker reads."""
    for w in WORKERS:
        assert w.name in [r.strip() for r in w.input.read_by.split(",")], (w.name, w.input.name)


def test_kustomizations_name_only_files_that_exist():
    for folder in KUSTOMIZATIONS:
        for path in kustomization_resources(folder):
            assert path.exists(), f"{folder / 'kustomization.yaml'} names {path}, which does not exist"


@pytest.mark.parametrize("path", _resource_files(), ids=_ids(_resource_files()))
@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_manifest_files_validate_offline(path, k8s_version):
    for doc in load_docs(path):
        validate_manifest(doc, k8s_version)


def test_no_secret_is_committed():
    for path in K8S_DIR.rglob("*.yaml"):
        for doc in load_docs(path):
            assert doc.get("kind") != "Secret", f"{path} holds a Secret; create it with kubectl (deploy/README.md)"
    for folder in KUSTOMIZATIONS:
        assert "secretGenerator" not in (folder / "kustomization.yaml").read_text()


def test_a_crd_schema_refuses_a_typo():
    import jsonschema
    doc = manifests.scaled_object(WORKERS[0])
    doc["spec"]["maxReplicas"] = doc["spec"].pop("maxReplicaCount")
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(doc)
    topic = manifests.kafka_topic(CATALOG[0])
    topic["spec"]["partitions"] = "twelve"
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(topic)


def test_kubernetes_validate_refuses_an_unknown_field():
    import kubernetes_validate
    doc = manifests.worker_deployment(WORKERS[0])
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(doc)


built = cache(kustomize_build)  # each overlay once per session; the tests only read the result

needs_kustomize = pytest.mark.skipif(kustomize_command() is None,
                                     reason="neither kustomize nor kubectl is installed: kustomize build not checked")


@needs_kustomize
@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.name for p in OVERLAYS])
def test_overlay_builds_and_every_object_validates(overlay):
    docs = built(overlay)
    namespace = next(d["metadata"]["name"] for d in docs if d["kind"] == "Namespace")
    for doc in docs:
        validate_manifest(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]
        template = doc.get("spec", {}).get("template")
        if doc["kind"] in ("Deployment", "Job") and template:
            # prometheus-k8s.yml keeps pods by this label
            assert template["metadata"]["labels"]["app.kubernetes.io/part-of"] == "graduate"
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ScaledObject", "KafkaTopic", "Kafka",
            "Job", "CronJob", "ConfigMap", "PersistentVolumeClaim"} <= kinds


@needs_kustomize
@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.name for p in OVERLAYS])
def test_keda_dials_the_bootstrap_the_pods_use(overlay):
    docs = built(overlay)
    namespace = next(d["metadata"]["name"] for d in docs if d["kind"] == "Namespace")
    settings = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("graduate-settings"))
    bootstrap = settings["data"]["GRADUATE_KAFKA_BOOTSTRAP"]
    assert f".{namespace}.svc:" in bootstrap  # KEDA resolves it from its own namespace
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    assert scaled and all(d["spec"]["triggers"][0]["metadata"]["bootstrapServers"] == bootstrap for d in scaled)


@needs_kustomize
def test_dev_overlay_asks_for_no_gpu_and_prod_does():
    def gpus(docs):
        return [d["metadata"]["name"] for d in docs if "nvidia.com/gpu" in str(d.get("spec"))]
    dev = {o.name: o for o in OVERLAYS}["dev"]
    prod = {o.name: o for o in OVERLAYS}["prod"]
    assert gpus(built(dev)) == []
    assert set(gpus(built(prod))) >= {"graduate-triton", "graduate-trainer", "graduate-train"}


@needs_kustomize
def test_router_takes_the_frontier_from_the_secret_in_prod_and_the_simulator_in_dev():
    def router_env(overlay_name):
        overlay = {o.name: o for o in OVERLAYS}[overlay_name]
        router = next(d for d in built(overlay) if d["kind"] == "Deployment"
                      and d["metadata"]["name"] == "graduate-router")
        return {e["name"]: e for e in router["spec"]["template"]["spec"]["containers"][0]["env"]}
    prod, dev = router_env("prod"), router_env("dev")
    for name in ("GRADUATE_FRONTIER_BASE_URL", "GRADUATE_FRONTIER_API_KEY"):
        ref = prod[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "graduate-secrets", "key": name}  # required: no `optional`
    assert dev["GRADUATE_FRONTIER_BASE_URL"]["value"] == "http://graduate-frontier-sim:8090/v1"

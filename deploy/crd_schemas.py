"""JSON schemas for kubeconform from the operators' own CustomResourceDefinitions.

KEDA's and the Prometheus operator's CRDs come in their Go modules (deploy/local/validators.sh
downloads them through the Go module proxy); this turns each served version's openAPIV3Schema into
a strict JSON schema (an object with declared properties refuses any other), named the way
kubeconform's `-schema-location DIR/{{.Group}}_{{.ResourceAPIVersion}}_{{.ResourceKind}}.json`
finds it — the layout of the hand-written Strimzi schemas in deploy/k8s/crd-schemas/.

    python -m deploy.crd_schemas OUT_DIR CRD.yaml...
    python -m deploy.crd_schemas --kubernetes OUT_DIR VERSION...

The second form copies Kubernetes' own strict schemas for the given versions out of the
kubernetes-validate wheel, with their references made relative (the wheel's name
`/api/_definitions.json` under an `https://kubernetes.io` id, which kubeconform cannot resolve
from files).
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import yaml


def strict(schema: dict) -> dict:
    """The schema with every object that declares properties closed to others (kubeconform -strict)."""
    s = copy.deepcopy(schema)
    _close(s)
    return s


def _close(node) -> None:
    if isinstance(node, list):
        for item in node:
            _close(item)
        return
    if not isinstance(node, dict):
        return
    if node.pop("x-kubernetes-int-or-string", False):
        node.pop("type", None)
        node.pop("format", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("format") == "int-or-string":
        node.pop("format")
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        node["additionalProperties"] = False
    for value in node.values():
        _close(value)


def schemas_of(crd: dict) -> dict[str, dict]:
    """{file name: JSON schema} for each served version of one CustomResourceDefinition."""
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    out = {}
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        schema = strict(version["schema"]["openAPIV3Schema"])
        props = schema.setdefault("properties", {})
        props["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
        props["kind"] = {"type": "string", "enum": [kind]}
        props["metadata"] = {"type": "object"}  # ObjectMeta: kubeconform checks it for core kinds
        out[f"{group}_{version['name']}_{kind.lower()}.json"] = schema
    return out


def write_schemas(crd_files: list[Path], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in crd_files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            for name, schema in schemas_of(doc).items():
                (out_dir / name).write_text(json.dumps(schema))
                written.append(out_dir / name)
    return written


def write_kubernetes_schemas(versions: list[str], out_dir: Path) -> list[Path]:
    """OUT_DIR/vX.Y.Z-local-strict/<kind>[-<group>]-<version>.json, the wheel's layout."""
    import kubernetes_validate

    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    written = []
    for version in versions:
        src = root / f"v{version}-local-strict"
        if not src.is_dir():
            raise FileNotFoundError(f"kubernetes-validate has no schemas for Kubernetes {version}")
        dest = out_dir / f"v{version}-local-strict"
        dest.mkdir(parents=True, exist_ok=True)
        for path in src.glob("*.json"):
            schema = json.loads(path.read_text())
            schema.pop("$id", None)
            text = json.dumps(schema).replace('"/api/_definitions.json#', '"_definitions.json#')
            (dest / path.name).write_text(text)
            written.append(dest / path.name)
    return written


def main(argv: list[str]) -> int:
    if argv[:1] == ["--kubernetes"] and len(argv) >= 3:
        written = write_kubernetes_schemas(argv[2:], Path(argv[1]))
        print(f"{len(written)} Kubernetes schemas in {argv[1]}")
        return 0 if written else 1
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    written = write_schemas([Path(p) for p in argv[1:]], Path(argv[0]))
    print(f"{len(written)} schemas in {argv[0]}")
    return 0 if written else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

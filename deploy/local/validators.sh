#!/usr/bin/env bash
# Install the manifest validators `make test` runs, cached outside the clone ($GRADUATE_TOOLS_DIR,
# default ~/.cache/graduate/tools), each from a package registry:
#   kubeconform   go install (Go module proxy)                  Kubernetes + CRD manifests
#   composecheck  go build of deploy/tools/composecheck          compose files (compose-go, what docker compose uses)
#   promtool      Debian's `prometheus` package, unpacked only   alert rules, their tests, Prometheus config
#   crd-schemas/  KEDA's and the Prometheus operator's CRDs from their Go modules, turned into
#                 JSON schemas by deploy/crd_schemas.py (Strimzi's are hand-written: deploy/k8s/crd-schemas/)
#   k8s-schemas/  Kubernetes' own strict schemas (1.29, 1.37) from the kubernetes-validate wheel in .venv
# A tool that cannot be
# had is reported and left out; its tests then skip and say why. Re-running is cheap (all cached).
set -uo pipefail
cd "$(dirname "$0")/../.."
TOOLS=${GRADUATE_TOOLS_DIR:-$HOME/.cache/graduate/tools}
KUBECONFORM_VERSION=v0.7.0
KEDA_VERSION=v2.20.2                       # v2.21 needs Go 1.27
PROMETHEUS_OPERATOR_VERSION=v0.85.0
PY=$PWD/.venv/bin/python
mkdir -p "$TOOLS/bin" "$TOOLS/crd-schemas"
missing=()

for v in 1.29.0 1.37.0; do  # deploy/validate.py K8S_VERSIONS
  if [ ! -f "$TOOLS/k8s-schemas/v$v-local-strict/_definitions.json" ]; then
    "$PY" -m deploy.crd_schemas --kubernetes "$TOOLS/k8s-schemas" "$v" >/dev/null || missing+=("Kubernetes $v schemas")
  fi
done

if ! command -v go >/dev/null; then
  missing+=("go (kubeconform, composecheck, CRD schemas)")
else
  if [ ! -x "$TOOLS/bin/kubeconform" ] || ! "$TOOLS/bin/kubeconform" -v | grep -q "${KUBECONFORM_VERSION#v}"; then
    GOBIN="$TOOLS/bin" GOFLAGS=-mod=mod go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" \
      || missing+=(kubeconform)
  fi
  src=deploy/tools/composecheck
  if [ ! -x "$TOOLS/bin/composecheck" ] || [ "$src/main.go" -nt "$TOOLS/bin/composecheck" ] || [ "$src/go.mod" -nt "$TOOLS/bin/composecheck" ]; then
    (cd "$src" && go build -o "$TOOLS/bin/composecheck" .) || missing+=(composecheck)
  fi
  stamp="$TOOLS/crd-schemas/.keda-$KEDA_VERSION-po-$PROMETHEUS_OPERATOR_VERSION"
  if [ ! -f "$stamp" ] || [ deploy/crd_schemas.py -nt "$stamp" ]; then
    keda=$(cd /tmp && go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" | "$PY" -c 'import json,sys; print(json.load(sys.stdin).get("Dir", ""))')
    po=$(cd /tmp && go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" | "$PY" -c 'import json,sys; print(json.load(sys.stdin).get("Dir", ""))')
    if [ -n "$keda" ] && [ -n "$po" ] \
       && "$PY" -m deploy.crd_schemas "$TOOLS/crd-schemas" "$keda"/config/crd/bases/keda.sh_*.yaml \
            "$po/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml" \
            "$po/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" \
            "$po/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"; then
      touch "$stamp"
    else
      missing+=("CRD schemas (KEDA $KEDA_VERSION, prometheus-operator $PROMETHEUS_OPERATOR_VERSION)")
    fi
  fi
fi

if [ ! -x "$TOOLS/bin/promtool" ]; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1; }; }) \
     && dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x" && cp "$tmp/x/usr/bin/promtool" "$TOOLS/bin/promtool"; then
    :
  else
    missing+=("promtool (Debian package prometheus)")
  fi
  rm -rf "$tmp"
fi

if [ ${#missing[@]} -gt 0 ]; then
  printf 'WARNING: not installed: %s; their tests will skip\n' "${missing[@]}"
fi
exit 0

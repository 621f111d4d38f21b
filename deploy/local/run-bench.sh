#!/usr/bin/env bash
# `make bench`: start Kafka and Triton where they are not running yet, run every benchmark
# (bench/run_all.py: bench/bench_*.py one after another, then bench/RESULTS.md), and stop only
# the services this script started: a Kafka or Triton that was already up (yours, `make up`'s,
# an external one) is left running.
set -uo pipefail
cd "$(dirname "$0")/../.."
KAFKA=deploy/local/kafka/kafka.sh
TRITON=deploy/local/triton/triton.sh
REGISTRY=deploy/local/apicurio/apicurio.sh
running() { bash "$1" status >/dev/null 2>&1; }
stop=()
running "$KAFKA" || stop+=("$KAFKA")
running "$TRITON" || stop+=("$TRITON")
if [ -n "${GRADUATE_SCHEMA_REGISTRY_URL:-}" ] && ! running "$REGISTRY"; then stop+=("$REGISTRY"); fi
cleanup() {
  local i
  for ((i = ${#stop[@]} - 1; i >= 0; i--)); do bash "${stop[$i]}" stop >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[ ${#stop[@]} -gt 0 ] && echo "make bench starts (and will stop): ${stop[*]}"
make -s up || { echo "make up failed"; exit 1; }
nice -n 5 .venv/bin/python bench/run_all.py "$@"

#!/usr/bin/env bash
# Start Kafka and Triton, run pytest on the given paths, stop everything — also on failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
started=0
cleanup() { if [ "$started" = 1 ]; then make -s down >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT INT TERM
if [ -z "${GRADUATE_KAFKA_BOOTSTRAP:-}" ] || [ -z "${GRADUATE_TRITON_URL:-}" ]; then started=1; fi
make -s up || { echo "make up failed"; exit 1; }
start=$(date +%s)
.venv/bin/python -m pytest "$@"
rc=$?
echo "tests took $(( $(date +%s) - start )) s (exit $rc)"
exit $rc

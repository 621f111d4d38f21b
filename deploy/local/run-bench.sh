#!/usr/bin/env bash
# `make bench`: start Kafka and Triton (unless external ones are named), run every benchmark
# (bench/run_all.py: bench/bench_*.py one after another, then bench/RESULTS.md), stop what we started.
set -uo pipefail
cd "$(dirname "$0")/../.."
started=0
cleanup() { if [ "$started" = 1 ]; then make -s down >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ -z "${GRADUATE_KAFKA_BOOTSTRAP:-}" ] || [ -z "${GRADUATE_TRITON_URL:-}" ]; then started=1; fi
make -s up || { echo "make up failed"; exit 1; }
.venv/bin/python bench/run_all.py "$@"

#!/usr/bin/env bash
# Start Kafka and Triton, run pytest on the given paths, stop everything — also on failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
started=0
cleanup() {
  local rc=$?
  if [ "$started" = 1 ]; then
    make -s down >/dev/null 2>&1 || true
    if ! bash deploy/local/leftovers.sh; then echo "make down left processes running"; rc=1; fi
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
started=1  # the scripts start nothing for an external Kafka or Triton, and stop only their own
make -s up || { echo "make up failed"; exit 1; }
start=$(date +%s)
.venv/bin/python -m pytest "$@"
rc=$?
echo "tests took $(( $(date +%s) - start )) s (exit $rc)"
exit $rc

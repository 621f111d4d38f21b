#!/usr/bin/env bash
# `make demo [TASK=banking77|hwu64|restaurant8k]`: the graduation loop run by the product itself
# (services/demo/loop.py), leaving demo-report/facts.json. The Python entry starts the product with
# `graduate up` (Kafka and Triton unless external ones are named, the simulator, the router, the
# review page, every worker and the trainer) and stops all of it at the end, also on failure or Ctrl-C. Should it be killed outright, the trap below still stops every process with a
# pid file under $GRADUATE_VAR_DIR/run (the demo's own), and Kafka and Triton if the demo owned them.
set -uo pipefail
cd "$(dirname "$0")/../.."
export GRADUATE_VAR_DIR=${GRADUATE_VAR_DIR:-$PWD/var}
kafka_was_up=0; triton_was_up=0
bash deploy/local/kafka/kafka.sh status >/dev/null 2>&1 && kafka_was_up=1
bash deploy/local/triton/triton.sh status >/dev/null 2>&1 && triton_was_up=1
rc=0
last_resort() {
  # Only when the Python entry could not clean up after itself (killed by a signal).
  if (( rc > 128 && rc != 130 )); then
    bash deploy/local/stop-services.sh || true
    [[ $triton_was_up = 1 ]] || bash deploy/local/triton/triton.sh stop >/dev/null 2>&1 || true
    [[ $kafka_was_up = 1 ]] || bash deploy/local/kafka/kafka.sh stop >/dev/null 2>&1 || true
  fi
}
trap last_resort EXIT
export GRADUATE_DEMO_SCENARIO=${TASK:-banking77}   # banking77, hwu64 or restaurant8k
.venv/bin/python -m services.demo.loop "$@" &
demo=$!
# Ctrl-C reaches the Python entry directly (same process group); a TERM sent to this script is passed
# on. The entry stops everything on the first signal and ignores the next ones, so wait for it.
trap 'kill -TERM "$demo" 2>/dev/null' INT TERM
while true; do
  wait "$demo"; rc=$?
  kill -0 "$demo" 2>/dev/null || break
done
exit $rc

#!/usr/bin/env bash
# `make demo`: the whole graduation loop on Banking77 (services/demo/run.py), leaving demo-report/;
# `make demo TASK=restaurant8k`: the extraction task (services/demo/extraction.py).
# The Python entry starts Kafka and Triton (unless GRADUATE_KAFKA_BOOTSTRAP / GRADUATE_TRITON_URL name
# external ones), the simulator, the router and the workers, and stops all of it at the end, also on
# failure or Ctrl-C. Should it be killed outright, the trap below still stops every process with a
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
case "${TASK:-banking77}" in
  banking77|banking77-intent) entry=services.demo.run ;;
  restaurant8k|restaurant8k-booking) entry=services.demo.extraction ;;
  *) echo "demo.sh: unknown TASK=${TASK} (banking77 or restaurant8k)" >&2; exit 2 ;;
esac
.venv/bin/python -m "$entry" "$@" &
demo=$!
# Ctrl-C reaches the Python entry directly (same process group); a TERM sent to this script is passed
# on. The entry stops everything on the first signal and ignores the next ones, so wait for it.
trap 'kill -TERM "$demo" 2>/dev/null' INT TERM
while true; do
  wait "$demo"; rc=$?
  kill -0 "$demo" 2>/dev/null || break
done
exit $rc

#!/usr/bin/env bash
# Print every process still running that belongs to this checkout's var dir (Kafka, Triton, Apicurio,
# graduate services); exit 1 when there is one. `make test` runs it after `make down`.
set -u
cd "$(dirname "$0")/../.."
var="${GRADUATE_VAR_DIR:-$PWD/var}"
found=0
for pid in $(pgrep -f "graduate.kafka.var=$var" || true) $(pgrep -f "tritonserver.*$var" || true) \
           $(pgrep -f "graduate.apicurio.var=$var" || true); do
  echo "left running: $pid $(tr '\0' ' ' </proc/$pid/cmdline 2>/dev/null | cut -c1-160)"; found=1
done
for pidfile in "$var"/run/*.pid; do
  [ -e "$pidfile" ] || continue
  pid=$(cat "$pidfile"); if kill -0 "$pid" 2>/dev/null; then echo "left running: $pid ($pidfile)"; found=1; fi
done
exit $found

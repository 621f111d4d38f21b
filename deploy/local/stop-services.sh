#!/usr/bin/env bash
# Stop every graduate process (router, simulator, workers) started with a pid file under var/run.
set -u
cd "$(dirname "$0")/../.."
run_dir="${GRADUATE_VAR_DIR:-$PWD/var}/run"
[ -d "$run_dir" ] || exit 0
for pidfile in "$run_dir"/*.pid; do
  [ -e "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    echo "stopped $(basename "$pidfile" .pid) ($pid)"
  fi
  rm -f "$pidfile"
done

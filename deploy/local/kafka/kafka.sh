#!/usr/bin/env bash
# Runs the local Apache Kafka 4.x broker (KRaft, one broker+controller on 127.0.0.1) from
# jars that Maven resolves off Maven Central: no tarball, no Docker. See README.md here.
#
#   kafka.sh fetch|start|stop|status|logs [tail args]|clean
#
# Environment:
#   GRADUATE_KAFKA_PORT             broker port (default 9092)
#   GRADUATE_KAFKA_CONTROLLER_PORT  controller port (default 9093)
#   GRADUATE_VAR_DIR                state folder (default <repo>/var); data, logs and pid
#                                   live in $GRADUATE_VAR_DIR/kafka/
#   GRADUATE_KAFKA_BOOTSTRAP        when set to anything but 127.0.0.1:$GRADUATE_KAFKA_PORT, an
#                                   external cluster is used: start, stop and clean do nothing
#   GRADUATE_KAFKA_START_TIMEOUT_S  how long start waits for the broker (default 90)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
POM=$HERE/pom.xml
LIBS=$HERE/libs
STAMP=$LIBS/.resolved

PORT=${GRADUATE_KAFKA_PORT:-9092}
CONTROLLER_PORT=${GRADUATE_KAFKA_CONTROLLER_PORT:-9093}
VAR_DIR=${GRADUATE_VAR_DIR:-$REPO/var}
START_TIMEOUT_S=${GRADUATE_KAFKA_START_TIMEOUT_S:-90}
STOP_TIMEOUT_S=30

mkdir -p "$VAR_DIR/kafka"
KAFKA_VAR=$(cd "$VAR_DIR/kafka" && pwd)
DATA_DIR=$KAFKA_VAR/data
LOG_DIR=$KAFKA_VAR/logs
PID_FILE=$KAFKA_VAR/pid
CLUSTER_ID_FILE=$KAFKA_VAR/cluster.id
CONFIG=$KAFKA_VAR/server.properties
SERVER_LOG=$LOG_DIR/server.log
# Tags our JVM's command line, so that stop finds it even without a pid file and never
# touches another Kafka (another clone, another var dir) on the same machine.
MARKER="-Dgraduate.kafka.var=$KAFKA_VAR"

JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java

say() { echo "kafka.sh: $*"; }
die() { echo "kafka.sh: error: $*" >&2; exit 1; }

kafka_version() {
  sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM"
}

# A stamp naming the pinned Kafka version and the pom's checksum: any change to the pom
# re-resolves, anything else reuses libs/.
wanted_stamp() {
  echo "kafka=$(kafka_version) pom=$(sha256sum "$POM" | cut -d' ' -f1)"
}

libs_current() {
  [[ -f $STAMP && -f $LIBS/kafka_2.13-$(kafka_version).jar && "$(cat "$STAMP")" == "$(wanted_stamp)" ]]
}

cmd_fetch() {
  if libs_current; then
    say "libs/ already holds Kafka $(kafka_version)"
    return
  fi
  command -v mvn >/dev/null || die "mvn not found: install Maven 3.8+ to resolve the Kafka jars"
  say "resolving Kafka $(kafka_version) jars from Maven Central into libs/"
  local staging=$LIBS.partial
  rm -rf "$staging"
  # Maven's output is kept for a failure only (with -q, Maven 3.8 still prints colour resets).
  local mvn_log
  mvn_log=$(mktemp)
  if ! mvn -q -B -f "$POM" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$staging" >"$mvn_log" 2>&1; then
    cat "$mvn_log" >&2
    rm -f "$mvn_log"
    die "mvn could not resolve the jars listed in $POM"
  fi
  rm -f "$mvn_log"
  [[ -f $staging/kafka_2.13-$(kafka_version).jar ]] || die "mvn ran but kafka_2.13-$(kafka_version).jar is missing"
  wanted_stamp >"$staging/.resolved"
  rm -rf "$LIBS"
  mv "$staging" "$LIBS"
  say "resolved $(find "$LIBS" -name '*.jar' | wc -l) jars"
}

# Prints the pids of java processes started by this script for this var dir.
our_pids() {
  local pid
  for pid in $(pgrep -x java || true); do
    if tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$MARKER"; then
      echo "$pid"
    fi
  done
}

running_pid() {
  local pid
  if [[ -f $PID_FILE ]]; then
    pid=$(cat "$PID_FILE")
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF -- "$MARKER"; then
      echo "$pid"
      return
    fi
  fi
  our_pids | head -n1
}

port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

external() {
  if [[ -n ${GRADUATE_KAFKA_BOOTSTRAP:-} && $GRADUATE_KAFKA_BOOTSTRAP != "127.0.0.1:$PORT" ]]; then
    say "GRADUATE_KAFKA_BOOTSTRAP=$GRADUATE_KAFKA_BOOTSTRAP: using that external cluster, nothing to $1"
    return 0
  fi
  return 1
}

# Serialises start/stop/clean for one var dir (two test runs starting at once).
take_lock() {
  exec 9>"$KAFKA_VAR/.lock"
  flock -w 120 9 || die "another kafka.sh holds $KAFKA_VAR/.lock"
}

check_java() {
  command -v "$JAVA" >/dev/null || die "java not found: Kafka 4.x needs Java 17+"
  local major
  major=$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
  (( ${major%%.*} >= 17 )) || die "Kafka 4.x needs Java 17+, found $major at $(command -v "$JAVA")"
}

render_config() {
  sed -e "s#@PORT@#$PORT#g" -e "s#@CONTROLLER_PORT@#$CONTROLLER_PORT#g" -e "s#@DATA_DIR@#$DATA_DIR#g" \
    "$HERE/server.properties.template" >"$CONFIG"
}

# Formats the data folder once; the cluster id is generated on first use and kept.
format_storage() {
  local meta=$DATA_DIR/meta.properties
  if [[ -f $meta ]]; then
    sed -n 's/^cluster.id=//p' "$meta" >"$CLUSTER_ID_FILE"
    return
  fi
  if [[ ! -s $CLUSTER_ID_FILE ]]; then
    "$JAVA" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid | tail -n1 >"$CLUSTER_ID_FILE"
  fi
  mkdir -p "$DATA_DIR"
  "$JAVA" -cp "$LIBS/*" -Dlog4j2.configurationFile="$HERE/log4j2.yaml" -Dkafka.logs.dir="$LOG_DIR" \
    kafka.tools.StorageTool format -c "$CONFIG" -t "$(cat "$CLUSTER_ID_FILE")" --ignore-formatted \
    >"$LOG_DIR/format.out" 2>&1 || { cat "$LOG_DIR/format.out" >&2; die "formatting $DATA_DIR failed"; }
}

show_tail() {
  echo "---- last lines of $SERVER_LOG ----" >&2
  tail -n 40 "$SERVER_LOG" >&2 2>/dev/null || true
  echo "---- last lines of $LOG_DIR/kafka.out ----" >&2
  tail -n 20 "$LOG_DIR/kafka.out" >&2 2>/dev/null || true
}

cmd_start() {
  external start && return
  take_lock
  local pid
  pid=$(running_pid)
  if [[ -n $pid ]]; then
    echo "$pid" >"$PID_FILE"
    say "already running (pid $pid) on 127.0.0.1:$PORT"
    return
  fi
  port_open "$PORT" && die "127.0.0.1:$PORT is taken by a process this script did not start"
  port_open "$CONTROLLER_PORT" && die "127.0.0.1:$CONTROLLER_PORT (controller) is taken by a process this script did not start"
  check_java
  cmd_fetch
  mkdir -p "$DATA_DIR" "$LOG_DIR"
  render_config
  format_storage

  local log_offset=0
  [[ -f $SERVER_LOG ]] && log_offset=$(stat -c %s "$SERVER_LOG")
  local started=$SECONDS
  # setsid: the broker outlives the shell (or test runner) that started it; 9>&- keeps
  # the lock from being inherited.
  setsid "$JAVA" -Xmx512m -Xms128m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HERE/log4j2.yaml" -Dkafka.logs.dir="$LOG_DIR" "$MARKER" \
    -cp "$LIBS/*" kafka.Kafka "$CONFIG" </dev/null >"$LOG_DIR/kafka.out" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$PID_FILE"
  say "starting Kafka $(kafka_version) (pid $pid) on 127.0.0.1:$PORT, data in $DATA_DIR"

  while (( SECONDS - started < START_TIMEOUT_S )); do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      show_tail
      die "the broker exited during start-up"
    fi
    if [[ -f $SERVER_LOG ]] && (( $(stat -c %s "$SERVER_LOG") < log_offset )); then
      log_offset=0  # the log rolled over
    fi
    if port_open "$PORT" && tail -c +$((log_offset + 1)) "$SERVER_LOG" 2>/dev/null | grep -q "Kafka Server started"; then
      say "ready on 127.0.0.1:$PORT after $((SECONDS - started)) s"
      return
    fi
    sleep 0.5
  done
  show_tail
  stop_pids "$pid"
  die "the broker did not answer on 127.0.0.1:$PORT within $START_TIMEOUT_S s; stopped it"
}

stop_pids() {
  local pids=("$@") deadline=$((SECONDS + STOP_TIMEOUT_S)) alive
  kill -TERM "${pids[@]}" 2>/dev/null || true
  while (( SECONDS < deadline )); do
    alive=$(for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && echo "$p"; done || true)
    [[ -z $alive ]] && break
    sleep 0.5
  done
  alive=$(for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && echo "$p"; done || true)
  if [[ -n $alive ]]; then
    say "still running after $STOP_TIMEOUT_S s, sending SIGKILL to $alive"
    # shellcheck disable=SC2086
    kill -KILL $alive 2>/dev/null || true
    sleep 1
  fi
}

cmd_stop() {
  external stop && return
  take_lock
  local pids
  pids=$( { running_pid; our_pids; } | sort -u)
  if [[ -z $pids ]]; then
    rm -f "$PID_FILE"
    say "not running"
    return
  fi
  # shellcheck disable=SC2086
  stop_pids $pids
  rm -f "$PID_FILE"
  [[ -z $(our_pids) ]] || die "a broker of $KAFKA_VAR is still running: $(our_pids | tr '\n' ' ')"
  say "stopped"
}

cmd_status() {
  if [[ -n ${GRADUATE_KAFKA_BOOTSTRAP:-} && $GRADUATE_KAFKA_BOOTSTRAP != "127.0.0.1:$PORT" ]]; then
    say "external cluster at $GRADUATE_KAFKA_BOOTSTRAP (GRADUATE_KAFKA_BOOTSTRAP is set)"
    return
  fi
  local pid
  pid=$(running_pid)
  if [[ -z $pid ]]; then
    say "not running (port $PORT, var $KAFKA_VAR)"
    return 3
  fi
  if port_open "$PORT"; then
    say "running: pid $pid, 127.0.0.1:$PORT, Kafka $(kafka_version), var $KAFKA_VAR"
  else
    say "starting or unhealthy: pid $pid alive but 127.0.0.1:$PORT does not answer"
    return 1
  fi
}

cmd_logs() {
  [[ -f $SERVER_LOG ]] || die "no log yet at $SERVER_LOG"
  if (( $# )); then tail "$@" "$SERVER_LOG"; else tail -n 100 "$SERVER_LOG"; fi
}

cmd_clean() {
  external clean && return
  cmd_stop
  rm -rf "$DATA_DIR" "$CLUSTER_ID_FILE" "$CONFIG"
  say "deleted $DATA_DIR"
}

usage() {
  sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

case ${1:-} in
  fetch) cmd_fetch ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  logs) shift; cmd_logs "$@" ;;
  clean) cmd_clean ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac

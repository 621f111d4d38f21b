#!/usr/bin/env bash
# A local three-broker Kafka 4.x KRaft cluster from the same Maven jars as kafka.sh, for testing
# replication (replication factor 3, min.insync.replicas 2) on one machine. Not for production.
#
#   cluster.sh start|stop|kill N|status
#
# Node 1 is broker+controller (the only KRaft voter), nodes 2 and 3 are brokers: killing node 2
# and/or 3 leaves the controller up, so the cluster fences them and shrinks the ISRs within seconds
# (what a test of "one broker down" and "two brokers down" needs).
#
# Environment:
#   GRADUATE_KAFKA_CLUSTER_DIR    folder of the nodes' data, logs and pids (default <repo>/var/kafka-cluster)
#   GRADUATE_KAFKA_CLUSTER_PORTS  the three brokers' ports, space-separated (default "9192 9193 9194")
#   GRADUATE_KAFKA_CLUSTER_CONTROLLER_PORT  node 1's controller port (default 9195)
#   GRADUATE_KAFKA_CLUSTER_HEAP   each JVM's -Xmx (default 256m)
#   GRADUATE_KAFKA_START_TIMEOUT_S  how long start waits for all three (default 120)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
LIBS=$HERE/libs
DIR=${GRADUATE_KAFKA_CLUSTER_DIR:-${GRADUATE_VAR_DIR:-$REPO/var}/kafka-cluster}
read -r -a PORTS <<<"${GRADUATE_KAFKA_CLUSTER_PORTS:-9192 9193 9194}"
CONTROLLER_PORT=${GRADUATE_KAFKA_CLUSTER_CONTROLLER_PORT:-9195}
HEAP=${GRADUATE_KAFKA_CLUSTER_HEAP:-256m}
START_TIMEOUT_S=${GRADUATE_KAFKA_START_TIMEOUT_S:-120}
JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java

say() { echo "cluster.sh: $*"; }
die() { echo "cluster.sh: error: $*" >&2; exit 1; }

(( ${#PORTS[@]} == 3 )) || die "GRADUATE_KAFKA_CLUSTER_PORTS must name three ports, got '${PORTS[*]}'"
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

marker() { echo "-Dgraduate.kafka.cluster=$DIR/node$1"; }

node_pid() {  # the pid of node N's JVM when it runs (found by its marker, never by name alone)
  local pid
  for pid in $(pgrep -x java || true); do
    if tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$(marker "$1")"; then
      echo "$pid"
      return
    fi
  done
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

render_config() {  # node N's server.properties
  local n=$1 port=${PORTS[$(( $1 - 1 ))]} roles=broker listeners
  listeners="PLAINTEXT://127.0.0.1:$port"
  if (( n == 1 )); then
    roles=broker,controller
    listeners="$listeners,CONTROLLER://127.0.0.1:$CONTROLLER_PORT"
  fi
  cat >"$DIR/node$n/server.properties" <<EOF
process.roles=$roles
node.id=$n
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=$listeners
advertised.listeners=PLAINTEXT://127.0.0.1:$port
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DIR/node$n/data
offsets.topic.replication.factor=3
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
default.replication.factor=3
min.insync.replicas=2
num.partitions=1
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
# A dead broker is fenced and dropped from the ISRs within seconds, not the defaults' 9 s / 30 s.
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
replica.lag.time.max.ms=4000
log.cleaner.backoff.ms=1000
log.cleaner.dedupe.buffer.size=4194304
num.network.threads=2
num.io.threads=2
num.replica.fetchers=1
num.recovery.threads.per.data.dir=1
background.threads=2
log.segment.bytes=16777216
EOF
}

cmd_start() {
  command -v "$JAVA" >/dev/null || die "java not found: Kafka 4.x needs Java 17+"
  bash "$HERE/kafka.sh" fetch >/dev/null
  local n port pid cluster_id started=$SECONDS
  for n in 1 2 3; do
    [[ -n $(node_pid $n) ]] && continue
    port=${PORTS[$(( n - 1 ))]}
    port_open "$port" && die "127.0.0.1:$port (node $n) is taken by a process this script did not start"
  done
  [[ -s $DIR/cluster.id ]] || "$JAVA" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid | tail -n1 >"$DIR/cluster.id"
  cluster_id=$(cat "$DIR/cluster.id")
  for n in 1 2 3; do
    [[ -n $(node_pid $n) ]] && { say "node $n already running"; continue; }
    mkdir -p "$DIR/node$n/data" "$DIR/node$n/logs"
    render_config $n
    "$JAVA" -cp "$LIBS/*" -Dlog4j2.configurationFile="$HERE/log4j2.yaml" -Dkafka.logs.dir="$DIR/node$n/logs" \
      kafka.tools.StorageTool format -c "$DIR/node$n/server.properties" -t "$cluster_id" --ignore-formatted \
      >"$DIR/node$n/logs/format.out" 2>&1 || { cat "$DIR/node$n/logs/format.out" >&2; die "formatting node $n failed"; }
    setsid "$JAVA" -Xmx"$HEAP" -Xms64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$HERE/log4j2.yaml" -Dkafka.logs.dir="$DIR/node$n/logs" "$(marker $n)" \
      -cp "$LIBS/*" kafka.Kafka "$DIR/node$n/server.properties" </dev/null >"$DIR/node$n/logs/kafka.out" 2>&1 &
    echo $! >"$DIR/node$n/pid"
  done
  say "starting 3 brokers on 127.0.0.1:${PORTS[0]},${PORTS[1]},${PORTS[2]} (controller :$CONTROLLER_PORT), data in $DIR"
  while (( SECONDS - started < START_TIMEOUT_S )); do
    local ready=0
    for n in 1 2 3; do
      pid=$(cat "$DIR/node$n/pid")
      kill -0 "$pid" 2>/dev/null || { tail -n 30 "$DIR/node$n/logs/kafka.out" >&2; cmd_stop; die "node $n exited during start-up"; }
      if port_open "${PORTS[$(( n - 1 ))]}" && grep -q "Kafka Server started" "$DIR/node$n/logs/server.log" 2>/dev/null; then
        ready=$(( ready + 1 ))
      fi
    done
    if (( ready == 3 )); then
      say "ready after $(( SECONDS - started )) s"
      return
    fi
    sleep 0.5
  done
  cmd_stop
  die "the cluster did not start within $START_TIMEOUT_S s; stopped it"
}

cmd_kill() {  # SIGKILL node N, as a crashed machine would go
  [[ ${1:-} =~ ^[123]$ ]] || die "kill needs a node number 1, 2 or 3"
  local pid
  pid=$(node_pid "$1")
  [[ -n $pid ]] || { say "node $1 is not running"; return; }
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  say "killed node $1 (pid $pid)"
}

cmd_stop() {
  local n pid pids=()
  for n in 3 2 1; do
    pid=$(node_pid $n)
    [[ -n $pid ]] && pids+=("$pid")
  done
  if (( ${#pids[@]} == 0 )); then
    say "not running"
    return
  fi
  kill -TERM "${pids[@]}" 2>/dev/null || true
  local deadline=$(( SECONDS + 20 ))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.3; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  done
  say "stopped ${#pids[@]} node(s)"
}

cmd_status() {
  local n pid up=0
  for n in 1 2 3; do
    pid=$(node_pid $n)
    if [[ -n $pid ]]; then say "node $n: pid $pid on 127.0.0.1:${PORTS[$(( n - 1 ))]}"; up=$(( up + 1 ))
    else say "node $n: not running"; fi
  done
  (( up == 3 ))
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  kill) cmd_kill "${2:-}" ;;
  status) cmd_status ;;
  *) sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac

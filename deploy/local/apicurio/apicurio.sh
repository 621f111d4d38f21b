#!/usr/bin/env bash
# Runs Apicurio Registry (H2 storage in the var dir) on 127.0.0.1 for the codec's registry mode; its
# Confluent-compatible API is http://127.0.0.1:PORT/apis/ccompat/v6. No Docker, no tarball:
# Maven builds the server from its published jar (io.apicurio:apicurio-registry-app) with
# Quarkus's plugin, into a cache outside the clone (~/.m2 + ~/.cache). See README.md here.
#
#   apicurio.sh fetch|start|stop|status|url|logs|clean
#
# Environment:
#   GRADUATE_SCHEMA_REGISTRY_PORT   HTTP port (default: GRADUATE_KAFKA_PORT + 5, i.e. 9097)
#   GRADUATE_SCHEMA_REGISTRY_URL    when set to anything but this script's URL, an external
#                                   registry is used: start and stop do nothing
#   GRADUATE_VAR_DIR                state folder (default <repo>/var); log and pid live in
#                                   $GRADUATE_VAR_DIR/apicurio/
#   GRADUATE_APICURIO_CACHE         where the built server lives (default ~/.cache/graduate/apicurio)
#   GRADUATE_APICURIO_START_TIMEOUT_S  how long start waits (default 120)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
POM=$HERE/pom.xml
PORT=${GRADUATE_SCHEMA_REGISTRY_PORT:-$(( ${GRADUATE_KAFKA_PORT:-9092} + 5 ))}
URL="http://127.0.0.1:$PORT/apis/ccompat/v6"
VAR_DIR=${GRADUATE_VAR_DIR:-$REPO/var}
START_TIMEOUT_S=${GRADUATE_APICURIO_START_TIMEOUT_S:-120}
CACHE=${GRADUATE_APICURIO_CACHE:-$HOME/.cache/graduate/apicurio}

mkdir -p "$VAR_DIR/apicurio"
APICURIO_VAR=$(cd "$VAR_DIR/apicurio" && pwd)
PID_FILE=$APICURIO_VAR/pid
LOG=$APICURIO_VAR/registry.log
# Tags our JVM's command line, so that stop never touches another clone's registry.
MARKER="-Dgraduate.apicurio.var=$APICURIO_VAR"
JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java

say() { echo "apicurio.sh: $*"; }
die() { echo "apicurio.sh: error: $*" >&2; exit 1; }

version() { sed -n 's:.*<apicurio.version>\(.*\)</apicurio.version>.*:\1:p' "$POM"; }
build_dir() { echo "$CACHE/$(version)-$(sha256sum "$POM" | cut -c1-12)"; }
runner() { echo "$(build_dir)/target/apicurio-registry-local-1-runner.jar"; }

cmd_fetch() {
  if [[ -f $(runner) ]]; then
    say "Apicurio Registry $(version) already built in $(build_dir)"
    return
  fi
  command -v mvn >/dev/null || die "mvn not found: install Maven 3.8+ to build the registry"
  local dir
  dir=$(build_dir)
  mkdir -p "$dir"
  cp "$POM" "$dir/pom.xml"
  # The registry's parent pom names repositories besides Maven Central; only Central is used.
  cat >"$dir/settings.xml" <<'EOF'
<settings><mirrors><mirror><id>central-only</id><mirrorOf>*</mirrorOf>
<url>https://repo.maven.apache.org/maven2</url></mirror></mirrors></settings>
EOF
  say "building Apicurio Registry $(version) from Maven Central into $dir (first time: a few minutes)"
  # The app jar has no Jandex index: Quarkus must index it to find its REST resources and beans.
  if ! mvn -q -B -s "$dir/settings.xml" -f "$dir/pom.xml" package -DskipTests \
      -Dquarkus.index-dependency.apicurio.group-id=io.apicurio \
      -Dquarkus.index-dependency.apicurio.artifact-id=apicurio-registry-app >"$dir/build.log" 2>&1; then
    grep -E "ERROR|BUILD" "$dir/build.log" | head -20 >&2
    die "mvn could not build the registry (full log: $dir/build.log)"
  fi
  [[ -f $(runner) ]] || die "mvn ran but $(runner) is missing"
  say "built $(runner)"
}

running_pid() {
  local pid
  for pid in $( [[ -f $PID_FILE ]] && cat "$PID_FILE"; pgrep -x java || true); do
    if tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$MARKER"; then
      echo "$pid"
      return
    fi
  done
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

external() {
  if [[ -n ${GRADUATE_SCHEMA_REGISTRY_URL:-} && ${GRADUATE_SCHEMA_REGISTRY_URL%/} != "$URL" ]]; then
    say "GRADUATE_SCHEMA_REGISTRY_URL=$GRADUATE_SCHEMA_REGISTRY_URL: not this script's ($URL), nothing to $1"
    return 0
  fi
  return 1
}

take_lock() {
  exec 9>"$APICURIO_VAR/.lock"
  flock -w 600 9 || die "another apicurio.sh holds $APICURIO_VAR/.lock"
}

cmd_start() {
  external start && return
  take_lock
  local pid
  pid=$(running_pid)
  if [[ -n $pid ]]; then
    say "already running (pid $pid): $URL"
    return
  fi
  port_open "$PORT" && die "127.0.0.1:$PORT is taken by a process this script did not start"
  command -v "$JAVA" >/dev/null || die "java not found: the registry needs Java 11+"
  cmd_fetch
  local started=$SECONDS
  # setsid: the registry outlives the shell that started it; 9>&- keeps the lock to us.
  # H2 in a file under the var dir (the app's default is in memory): schema ids survive a
  # restart, so records written in registry mode stay readable.
  mkdir -p "$APICURIO_VAR/h2"
  REGISTRY_DATASOURCE_URL="jdbc:h2:file:$APICURIO_VAR/h2/registry" \
  setsid "$JAVA" -Xmx384m -Xms64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 "$MARKER" \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$PORT" \
    -D%prod.quarkus.datasource.jdbc.initial-size=2 -D%prod.quarkus.datasource.jdbc.min-size=2 \
    -D%prod.quarkus.datasource.jdbc.max-size=20 \
    -jar "$(runner)" </dev/null >"$LOG" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$PID_FILE"
  say "starting Apicurio Registry $(version) (pid $pid) on 127.0.0.1:$PORT"
  while (( SECONDS - started < START_TIMEOUT_S )); do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      tail -n 40 "$LOG" >&2
      die "the registry exited during start-up"
    fi
    if curl -sf -o /dev/null "$URL/subjects"; then
      say "ready after $((SECONDS - started)) s: $URL"
      return
    fi
    sleep 1
  done
  tail -n 40 "$LOG" >&2
  kill -TERM "$pid" 2>/dev/null || true
  die "the registry did not answer at $URL within $START_TIMEOUT_S s; stopped it"
}

cmd_stop() {
  external stop && return
  take_lock
  local pid
  pid=$(running_pid)
  if [[ -z $pid ]]; then
    rm -f "$PID_FILE"
    say "not running"
    return
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    say "still running after 30 s, SIGKILL $pid"
    kill -KILL "$pid" || true
  fi
  rm -f "$PID_FILE"
  say "stopped"
}

cmd_status() {
  local pid
  pid=$(running_pid)
  if [[ -z $pid ]]; then
    say "not running (port $PORT)"
    return 3
  fi
  say "running: pid $pid, $URL"
}

usage() { sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

case ${1:-} in
  fetch) cmd_fetch ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  url) echo "$URL" ;;
  logs) tail -n "${2:-100}" "$LOG" ;;
  clean) cmd_stop; rm -rf "$APICURIO_VAR/h2"; say "deleted every subject ($APICURIO_VAR/h2)" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Local NVIDIA Triton without Docker: runs the real tritonserver binary (2.51) that the
# nvidia-pytriton wheel carries, from its own venv, with the Python backend only.
# See README.md next to this file and shared/notes/ml-stack-facts.md "Triton without Docker".
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)

VAR_DIR=${GRADUATE_VAR_DIR:-$REPO/var}
RUN_DIR=$VAR_DIR/triton
BACKENDS_DIR=$RUN_DIR/backends
PID_FILE=$RUN_DIR/tritonserver.pid
LOG_FILE=$RUN_DIR/tritonserver.log
MODEL_REPOSITORY=${GRADUATE_MODEL_REPOSITORY:-$REPO/var/model-repository}

VENV=${GRADUATE_TRITON_VENV:-$REPO/.venv-triton}
VENV_PYTHON=$VENV/bin/python
BASE_PYTHON=${GRADUATE_TRITON_PYTHON:-python3.11}
REQUIREMENTS=$HERE/requirements.txt
STAMP=$VENV/.graduate-requirements.sha256

HOST=127.0.0.1
HTTP_PORT=${GRADUATE_TRITON_HTTP_PORT:-8000}
GRPC_PORT=${GRADUATE_TRITON_GRPC_PORT:-8001}
METRICS_PORT=${GRADUATE_TRITON_METRICS_PORT:-8002}
READY_TIMEOUT_S=${GRADUATE_TRITON_READY_TIMEOUT_S:-90}
STOP_TIMEOUT_S=${GRADUATE_TRITON_STOP_TIMEOUT_S:-40}
READY_URL=http://$HOST:$HTTP_PORT/v2/health/ready
SHM_PREFIX=/dev/shm/triton_python_backend_shm_region_

say() { printf 'triton: %s\n' "$*"; }
die() { printf 'triton: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: $(basename "$0") COMMAND

Commands:
  setup    create/refresh $VENV from requirements.txt, assemble the backends folder
  start    setup if needed, start tritonserver in the background, wait until ready
  stop     stop it (SIGTERM, then SIGKILL), clean its Python-backend shared memory
  status   say whether it runs and is ready, list the model repository index
  logs     tail the server log (extra arguments go to tail, e.g. -f or -n 500)

Environment (all optional):
  GRADUATE_VAR_DIR               state folder (default <repo>/var); pid and log in \$GRADUATE_VAR_DIR/triton
  GRADUATE_MODEL_REPOSITORY      model repository (default <repo>/var/model-repository)
  GRADUATE_TRITON_HTTP_PORT      HTTP port on 127.0.0.1 (default 8000)
  GRADUATE_TRITON_GRPC_PORT      gRPC port on 127.0.0.1 (default 8001)
  GRADUATE_TRITON_METRICS_PORT   metrics port on 127.0.0.1 (default 8002)
  GRADUATE_TRITON_URL            an external Triton is used: start/stop do nothing
  GRADUATE_TRITON_PYTHON         Python 3.x (shared libpython) that creates the venv (default python3.11)
EOF
}

external_triton() {
    if [[ -n ${GRADUATE_TRITON_URL:-} ]]; then
        say "GRADUATE_TRITON_URL=$GRADUATE_TRITON_URL is set: using that external Triton, nothing to $1 here"
        return 0
    fi
    return 1
}

requirements_hash() {
    sha256sum "$REQUIREMENTS" | cut -d' ' -f1
}

site_packages() {
    "$VENV_PYTHON" -c 'import sysconfig; print(sysconfig.get_path("purelib"))'
}

python_version() {
    "$VENV_PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'
}

python_libdir() {
    "$VENV_PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))'
}

venv_is_current() {
    [[ -x $VENV_PYTHON && -f $STAMP && $(cat "$STAMP") == "$(requirements_hash)" ]]
}

install_venv() {
    command -v "$BASE_PYTHON" >/dev/null || die "$BASE_PYTHON not found (set GRADUATE_TRITON_PYTHON)"
    local base
    base=$("$BASE_PYTHON" -c 'import sys; print(sys.executable)')
    say "installing $VENV from $(basename "$REQUIREMENTS") with $base"
    if command -v uv >/dev/null; then
        [[ -x $VENV_PYTHON ]] || uv venv --quiet --python "$base" "$VENV"
        uv pip sync --quiet --python "$VENV_PYTHON" "$REQUIREMENTS"
    else
        [[ -x $VENV_PYTHON ]] || "$base" -m venv "$VENV"
        "$VENV_PYTHON" -m pip install --quiet --upgrade pip
        "$VENV_PYTHON" -m pip install --quiet -r "$REQUIREMENTS"
    fi
    requirements_hash >"$STAMP"
}

# The wheel's own backends/python lacks the stub, so tritonserver gets a backends folder
# holding the backend library, its utils module and the stub built for the venv's Python.
assemble_backends() {
    local wheel version libdir
    wheel=$(site_packages)/pytriton/tritonserver
    version=$(python_version)
    libdir=$(python_libdir)
    [[ -x $wheel/python_backend_stubs/$version/triton_python_backend_stub ]] \
        || die "the wheel has no Python-backend stub for Python $version"
    [[ -e $libdir/libpython$version.so.1.0 ]] \
        || die "$libdir/libpython$version.so.1.0 is missing: the stub needs a Python built with --enable-shared"
    mkdir -p "$BACKENDS_DIR/python"
    cp -f "$wheel/backends/python/libtriton_python.so" \
        "$wheel/backends/python/triton_python_backend_utils.py" \
        "$wheel/python_backend_stubs/$version/triton_python_backend_stub" \
        "$BACKENDS_DIR/python/"
}

backends_ready() {
    local f
    for f in libtriton_python.so triton_python_backend_utils.py triton_python_backend_stub; do
        [[ -e $BACKENDS_DIR/python/$f ]] || return 1
    done
}

cmd_setup() {
    venv_is_current || install_venv
    assemble_backends
    say "venv $VENV ready; backends in $BACKENDS_DIR"
}

# Alive and not a zombie (a server that died under this shell stays a zombie until it exits).
alive() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# The pid in the pid file, if that process is alive and still a tritonserver.
running_pid() {
    [[ -f $PID_FILE ]] || return 1
    local pid
    pid=$(cat "$PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q tritonserver || return 1
    echo "$pid"
}

is_ready() {
    curl --silent --fail --max-time 2 --output /dev/null "$READY_URL"
}

fail_start() {
    say "last log lines ($LOG_FILE):" >&2
    tail -n 40 "$LOG_FILE" >&2 || true
    die "$1"
}

cmd_start() {
    external_triton start && return 0
    local pid
    if pid=$(running_pid); then
        say "already running (pid $pid), HTTP $HOST:$HTTP_PORT, gRPC $HOST:$GRPC_PORT"
        return 0
    fi
    rm -f "$PID_FILE"
    if is_ready; then
        die "another server already answers $READY_URL (stop it, or choose other GRADUATE_TRITON_*_PORT)"
    fi
    { venv_is_current && backends_ready; } || cmd_setup

    local wheel libs started
    wheel=$(site_packages)/pytriton/tritonserver
    libs=$(site_packages)/nvidia_pytriton.libs:$(python_libdir)
    mkdir -p "$RUN_DIR" "$MODEL_REPOSITORY"
    [[ -f $LOG_FILE ]] && mv -f "$LOG_FILE" "$LOG_FILE.1"
    started=$EPOCHREALTIME
    # A restarted server serves what the repository holds (as compose and k8s do with
    # --load-model=*); a model that fails to load must not keep the server down.
    local load_args=()
    if compgen -G "$MODEL_REPOSITORY/*/config.pbtxt" >/dev/null; then
        load_args=(--load-model='*' --exit-on-error=false)
    fi
    # setsid: its own session and process group (no terminal signals; the group can be killed
    # with the stubs). The inner bash writes its pid and becomes tritonserver through exec.
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
        env -u PYTHONHOME -u PYTHONPATH \
        LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        PATH="$VENV/bin:$PATH" \
        "$wheel/bin/tritonserver" \
        --model-repository="$MODEL_REPOSITORY" \
        --model-control-mode=explicit "${load_args[@]}" \
        --strict-readiness=false \
        --backend-directory="$BACKENDS_DIR" \
        --cache-directory="$wheel/caches" \
        --http-address="$HOST" --http-port="$HTTP_PORT" \
        --grpc-address="$HOST" --grpc-port="$GRPC_PORT" \
        --allow-metrics=true --allow-gpu-metrics=false \
        --metrics-address="$HOST" --metrics-port="$METRICS_PORT" \
        </dev/null >"$LOG_FILE" 2>&1 &
    disown

    local deadline=$((SECONDS + READY_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        sleep 0.2
        if ! pid=$(running_pid); then
            # The pid file may not be written yet in the first instants.
            [[ -f $PID_FILE ]] || continue
            rm -f "$PID_FILE"
            fail_start "tritonserver exited during startup"
        fi
        if is_ready; then
            say "ready in $(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $started }") s (pid $pid):" \
                "HTTP $HOST:$HTTP_PORT, gRPC $HOST:$GRPC_PORT, metrics $HOST:$METRICS_PORT," \
                "models in $MODEL_REPOSITORY"
            return 0
        fi
    done
    stop_server || true
    fail_start "not ready within ${READY_TIMEOUT_S}s ($READY_URL)"
}

# Python-backend shared-memory regions mapped by a process tree rooted at $1.
shm_regions_of() {
    local pid=$1 child
    grep -o "${SHM_PREFIX}[^ ]*" "/proc/$pid/maps" 2>/dev/null | sed 's/ (deleted)$//' || true
    for child in $(cat "/proc/$pid/task/"*/children 2>/dev/null); do
        shm_regions_of "$child"
    done
}

# Regions owned by us that no live process maps any more: left over by a crashed server.
orphan_shm_regions() {
    local region mapped
    mapped=$(cat /proc/[0-9]*/maps 2>/dev/null | grep -o "${SHM_PREFIX}[^ ]*" | sort -u || true)
    for region in "$SHM_PREFIX"*; do
        [[ -O $region ]] || continue
        grep -qxF "$region" <<<"$mapped" || echo "$region"
    done
}

stop_server() {
    local pid regions
    if ! pid=$(running_pid); then
        rm -f "$PID_FILE"
        return 1
    fi
    regions=$(shm_regions_of "$pid" | sort -u)
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT_S))
    while alive "$pid" && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if alive "$pid"; then
        say "still running after ${STOP_TIMEOUT_S}s: SIGKILL to process group $pid"
    fi
    # The group also holds the Python-backend stubs; none of it should outlive the server.
    kill -KILL -- "-$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.1; done
    # shellcheck disable=SC2086  # region names hold no spaces
    rm -f $regions $(orphan_shm_regions)
    rm -f "$PID_FILE"
    say "stopped (pid $pid)"
}

cmd_stop() {
    external_triton stop && return 0
    stop_server || say "not running"
}

cmd_status() {
    if [[ -n ${GRADUATE_TRITON_URL:-} ]]; then
        say "external Triton at $GRADUATE_TRITON_URL (GRADUATE_TRITON_URL)"
        return 0
    fi
    local pid
    if ! pid=$(running_pid); then
        say "not running"
        return 1
    fi
    if is_ready; then
        say "running and ready (pid $pid): HTTP $HOST:$HTTP_PORT, gRPC $HOST:$GRPC_PORT, metrics $HOST:$METRICS_PORT"
        say "model repository $MODEL_REPOSITORY:"
        curl --silent --max-time 5 -X POST "http://$HOST:$HTTP_PORT/v2/repository/index" && echo
    else
        say "running (pid $pid) but not ready; see: $0 logs"
        return 2
    fi
}

cmd_logs() {
    [[ -f $LOG_FILE ]] || die "no log at $LOG_FILE"
    tail -n 200 "$@" "$LOG_FILE"
}

main() {
    local cmd=${1:-help}
    shift || true
    case $cmd in
        setup) cmd_setup ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        logs) cmd_logs "$@" ;;
        help | -h | --help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"

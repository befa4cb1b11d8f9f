# shellcheck shell=bash
# Helpers shared by bench/cache_hit.sh, bench/trace_cost.sh, bench/scenarios.sh and
# bench/soak.sh. Source it; do not run it. The including script sets LOG_TAG and WORK (a temp dir)
# and installs `trap cleanup EXIT`.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
# shellcheck disable=SC2034 # used by the including scripts
RESULTS_DIR="$BENCH_DIR/results"
# shellcheck disable=SC2034
TASKGATE_BIN=${TASKGATE_BIN:-"$REPO_DIR/target/release/taskgate"}
BUILD_RETRIES=${BUILD_RETRIES:-4}
SKIP_BUILD=${SKIP_BUILD:-0}
PIDS=()

log() { printf '[%s] %s\n' "${LOG_TAG:-bench}" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# "10s", "2m", "1h" or a plain number of seconds -> whole seconds.
to_secs() {
    local value=$1 number unit
    number=${value%[smh]}
    unit=${value#"$number"}
    [[ $number =~ ^[0-9]+$ ]] || die "bad duration '$value' (write 10s, 2m or 1h)"
    case $unit in
        '' | s) echo "$number" ;;
        m) echo $((number * 60)) ;;
        h) echo $((number * 3600)) ;;
    esac
}

# Stops one process we started: TERM, up to 5 s of grace, then KILL.
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Stops the most recently started process and forgets it.
stop_last() {
    local last=$((${#PIDS[@]} - 1))
    ((last >= 0)) || return 0
    stop_pid "${PIDS[$last]}"
    unset "PIDS[$last]"
    PIDS=("${PIDS[@]}")
}

# EXIT trap: stops everything we started, newest first, and removes the temp dir.
cleanup() {
    while ((${#PIDS[@]} > 0)); do
        stop_last
    done
    if [[ -n ${WORK:-} && -d $WORK ]]; then
        rm -rf "$WORK"
    fi
}

free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# Waits (at most 10 s) until URL answers anything over HTTP; fails early if PID dies.
wait_http() {
    local pid=$1 url=$2 i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if curl -s -o /dev/null --max-time 1 "$url"; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# cargo build --release of one manifest, retried a minute apart: src/ may be mid-edit.
build_release() {
    local manifest=$1 attempt
    for ((attempt = 1; attempt <= BUILD_RETRIES; attempt++)); do
        log "cargo build --release --manifest-path $manifest (attempt $attempt of $BUILD_RETRIES)"
        if cargo build --release --manifest-path "$manifest" >"$WORK/build.log" 2>&1; then
            return 0
        fi
        tail -n 20 "$WORK/build.log" >&2
        if ((attempt < BUILD_RETRIES)); then
            log "build failed; retrying in 60 s"
            sleep 60
        fi
    done
    die "cargo build failed for $manifest"
}

# One line describing what was measured, for the results file.
describe_build() {
    local commit
    commit=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n $(git -C "$REPO_DIR" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
        commit="$commit + uncommitted changes in src/"
    fi
    if [[ $SKIP_BUILD == 1 ]]; then
        echo "taskgate release binary built $(date -u -r "$TASKGATE_BIN" '+%Y-%m-%d %H:%M UTC')" \
            "(SKIP_BUILD=1; the work tree is now at $commit)"
    else
        echo "taskgate $commit (release build)"
    fi
}

# Percent of all cores busy over one second: other work on this machine skews every number.
cpu_busy_pct() {
    local a b
    a=$(head -n1 /proc/stat)
    sleep 1
    b=$(head -n1 /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN {
        n = split(a, x, " "); split(b, y, " ")
        for (i = 2; i <= n; i++) { total += y[i] - x[i]; if (i == 5 || i == 6) idle += y[i] - x[i] }
        printf "%d", (total > 0) ? 100 * (total - idle) / total : 0
    }'
}

# Host line for the results file; warns when the machine is not idle.
describe_host() {
    local cpu busy
    cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    busy=$(cpu_busy_pct)
    if ((busy > 15)); then
        log "warning: the machine is ${busy}% busy before the run; numbers will be low and noisy"
    fi
    echo "${cpu:-unknown CPU}, $(nproc) cores, Linux $(uname -r); ${busy}% CPU busy just before the run"
}

# start_fake NAME [FAKE FLAGS...]: starts bench/fake_upstream.py on a free loopback port (it
# stops by itself after 300 s unless the flags say --max-seconds otherwise); sets FAKE_PORT.
start_fake() {
    local name=$1 port_file="$WORK/$1.fake-port"
    shift
    python3 "$BENCH_DIR/fake_upstream.py" --port 0 --port-file "$port_file" --max-seconds 300 \
        "$@" >"$WORK/$name.fake.log" 2>&1 &
    PIDS+=("$!")
    await_port_file "$port_file" "$WORK/$name.fake.log" "$name: the fake upstream"
    # shellcheck disable=SC2034 # used by the including scripts
    FAKE_PORT=$(<"$port_file")
}

# await_port_file FILE LOG WHAT: waits (5 s at most) until the process started last has written
# FILE; dies showing LOG if it stopped or never did.
await_port_file() {
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s $1 ]] && return 0
        kill -0 "${PIDS[-1]}" 2>/dev/null || break
        sleep 0.05
    done
    cat "$2" >&2
    die "$3 did not start"
}

# start_taskgate NAME FAKE_PORT [TASKGATE FLAGS...]: starts TASKGATE_BIN on a free loopback port
# against the fake (no TLS on loopback), with obviously fake credentials in the environment as an
# operator sets them; sets TG_PORT and TG_PID.
start_taskgate() {
    local name=$1 fake_port=$2
    shift 2
    TG_PORT=$(free_port)
    TENCENTCLOUD_SECRET_ID=AKIDEXAMPLEFAKE0000000000000000000000 \
        TENCENTCLOUD_SECRET_KEY=fakeEXAMPLEkey000000000000000000 \
        RUST_LOG=${RUST_LOG:-error} "$TASKGATE_BIN" --listen "127.0.0.1:$TG_PORT" \
        --upstream-endpoint "http://127.0.0.1:$fake_port" "$@" \
        >"$WORK/$name.taskgate.log" 2>&1 &
    TG_PID=$!
    PIDS+=("$TG_PID")
    wait_http "$TG_PID" "http://127.0.0.1:$TG_PORT/healthz" || {
        cat "$WORK/$name.taskgate.log" >&2
        die "$name: taskgate did not start"
    }
}

# start_redis NAME: starts a throwaway redis-server on a free loopback port (no persistence);
# sets REDIS_PORT.
start_redis() {
    local name=$1 i
    command -v redis-server >/dev/null || die "redis-server is missing (apt-get install redis-server)"
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize no >"$WORK/$name.redis.log" 2>&1 &
    PIDS+=("$!")
    for ((i = 0; i < 100; i++)); do
        kill -0 "${PIDS[-1]}" 2>/dev/null || break
        if [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; then
            return 0
        fi
        sleep 0.1
    done
    cat "$WORK/$name.redis.log" >&2
    die "$name: redis-server did not start"
}

# fake_control PORT JSON: changes the fake upstream's settings at run time (POST /control).
fake_control() {
    curl -fsS --max-time 5 -H 'Content-Type: application/json' --data "$2" \
        "http://127.0.0.1:$1/control" >/dev/null || die "POST /control $2 failed"
}

# require_python: the scenario and soak drivers need Python 3.11+ (standard library only) and curl.
require_python() {
    command -v python3 >/dev/null || die "python3 (3.11+) is missing"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 must be 3.11 or newer"
    command -v curl >/dev/null || die "curl is missing"
}

# begin_run NAME [CARGO_TOML...]: a work folder in $WORK that is removed with every process this
# run starts (on exit, Ctrl-C or TERM), and the release builds it needs unless SKIP_BUILD=1
# (one build at a time: the machine has two cores).
begin_run() {
    local name=$1
    shift
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/taskgate-$name.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    if [[ $SKIP_BUILD != 1 ]]; then
        local manifest
        for manifest in "$REPO_DIR/Cargo.toml" "$@"; do
            build_release "$manifest"
        done
    fi
    [[ -x $TASKGATE_BIN ]] || die "$TASKGATE_BIN is missing (run without SKIP_BUILD=1)"
}

# publish_report REPORT RESULT_FILE: keeps a run's Markdown report in bench/results/ and prints it.
publish_report() {
    mkdir -p "$(dirname "$2")"
    cp "$1" "$2"
    echo
    cat "$2"
    log "written to $2"
}

# --- CPU accounting for the hit benchmarks (cache_hit.sh, trace_cost.sh) -----------------
# They set WORK and IDLE_WAIT_SECS.
HZ=$(getconf CLK_TCK)

# Someone else's work on this 2-core machine skews a run, so each run also reports how much
# user CPU went to processes other than the server and wrk ("other CPU", % of one core).
all_user_ticks() { awk '/^cpu / {print $2 + $3}' /proc/stat; }

# User CPU ticks of a process (all threads) and its children (the nginx worker).
tree_user_ticks() {
    local total=0 p
    local -a pids
    mapfile -t pids < <(echo "$1"; pgrep -P "$1" || true)
    for p in "${pids[@]}"; do
        if [[ -r /proc/$p/stat ]]; then
            total=$((total + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12}')))
        fi
    done
    echo "$total"
}

# User CPU ticks of this shell's finished children (`times` must run in this shell, not a
# subshell, hence the file).
children_user_ticks() {
    times >"$WORK/times.txt"
    awk -v hz="$HZ" 'NR == 2 { split($1, t, /[ms]/); printf "%d", (t[1] * 60 + t[2]) * hz }' \
        "$WORK/times.txt"
}

# Waits (at most IDLE_WAIT) until the machine is under 10% busy: the server under test is idle
# now, so what is left is someone else's build or test run.
wait_idle() {
    local start=$SECONDS busy
    while :; do
        busy=$(cpu_busy_pct)
        ((busy < 10)) && return 0
        if ((SECONDS - start >= IDLE_WAIT_SECS)); then
            log "warning: still ${busy}% busy after waiting ${IDLE_WAIT_SECS}s; measuring anyway"
            return 0
        fi
        log "machine ${busy}% busy; waiting for it to settle (IDLE_WAIT=${IDLE_WAIT_SECS}s)"
        sleep 4
    done
}

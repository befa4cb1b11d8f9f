#!/usr/bin/env bash
# Partition: does a shared 20 calls/s budget hold while Redis, or a replica's path to it, fails?
#
# Per scenario: a fresh fake upstream (bench/fake_upstream.py --enforce-limit 20: it answers
# RequestLimitExceeded beyond 20 calls in any sliding second and records every call's arrival and
# flow id), a fresh redis-server (no persistence), and taskgates sharing it (--redis-url,
# --redis-prefix partition:, otherwise defaults). bench/partition.py drives saturating demand of
# distinct new tasks (every lookup one upstream call; replica r asks flow ids (r+1)*1e6+1, ... so
# the fake's call list says which replica made each call), while this script plays the fault
# timeline (seconds after t0):
#   steady         3 replicas, 20 s
#   partition      3 replicas, each through its own TCP relay to Redis (partition.py relays);
#                  replica 1 cut off 12.5-27.5 s (relay: connections closed, new ones
#                  blackholed), 40 s
#   redis-restart  3 replicas; redis-server SIGKILLed at 10 s, started again empty on the same
#                  port at 15 s; 40 s
#   scale          3 replicas, 3 more started at 10 s (each with its own clients); 30 s
#   busy-one       5 replicas, only replica 0 loaded, from 5 s; 20 s
#   busy-one-cut   as busy-one, replicas 1-4 cut off Redis (relays) from 3 s
# Reported per scenario and phase: the busiest sliding 1 s at the fake (≤ 20), limit_exceeded,
# budget use (answered calls / (20 x seconds) while demand was saturating), calls per replica,
# HTTP statuses seen by the clients; for busy-*, the busy replica's calls in each second after its
# load started and the first second it reached 18/s.
#
# Usage: bench/partition.sh                                  (all six, about 3.5 minutes)
#        TASKGATE_BIN=/path/to/taskgate bench/partition.sh  (measure that binary; no build)
#        PARTITION_SCENARIOS="steady busy-one" bench/partition.sh
#        SKIP_BUILD=1 reuses target/release/taskgate of this work tree.
#        PARTITION_CLIENTS (30) clients per loaded replica; PARTITION_CUT_MODE blackhole|refuse;
#        PARTITION_KEEP_LOGS=1 keeps every process's log in bench/results/partition-logs/
#        (RUST_LOG=warn for taskgate's shared-mode changes).
# Writes bench/results/partition.md and partition.jsonl and prints the table. Report only: the
# exit status is 0 whatever the numbers (1 if a scenario could not be run).

set -euo pipefail

LOG_TAG=partition
GIVEN_BIN=${TASKGATE_BIN:-}
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RATE=20 # taskgate's default TASKGATE_RATE_LIMIT and the account's limit the fake enforces
ALL_SCENARIOS="steady partition redis-restart scale busy-one busy-one-cut"
read -r -a SCENARIO_LIST <<<"${PARTITION_SCENARIOS:-$ALL_SCENARIOS}"
CLIENTS=${PARTITION_CLIENTS:-30}
CUT_MODE=${PARTITION_CUT_MODE:-blackhole}
FAKE_DELAY_MS=${FAKE_DELAY_MS:-20}
KEEP_LOGS=${PARTITION_KEEP_LOGS:-0}
DRIVER="$BENCH_DIR/partition.py"
RESULT_MD="$RESULTS_DIR/partition.md"
RESULT_JSONL="$RESULTS_DIR/partition.jsonl"

((${#SCENARIO_LIST[@]} > 0)) || die "PARTITION_SCENARIOS is empty"
for s in "${SCENARIO_LIST[@]}"; do
    [[ " $ALL_SCENARIOS " == *" $s "* ]] || die "unknown scenario '$s' ($ALL_SCENARIOS)"
done
if ! [[ $CLIENTS =~ ^[0-9]+$ ]] || ((CLIENTS < 1 || CLIENTS > 500)); then
    die "PARTITION_CLIENTS must be 1..500"
fi
[[ $CUT_MODE == blackhole || $CUT_MODE == refuse ]] ||
    die "PARTITION_CUT_MODE must be blackhole or refuse"
require_python
command -v redis-server >/dev/null || die "redis-server is missing (apt-get install redis-server)"
command -v redis-cli >/dev/null || die "redis-cli is missing (apt-get install redis-server)"

if [[ -n $GIVEN_BIN ]]; then
    TASKGATE_BIN=$GIVEN_BIN
    SKIP_BUILD=1 # measure the binary given, build nothing
fi
begin_run partition

# What binary is measured: the commit of the work tree it was built in, when it is in one.
describe_binary() {
    local dir commit built
    dir=$(cd "$(dirname "$TASKGATE_BIN")" && pwd)
    built=$(date -u -r "$TASKGATE_BIN" '+%Y-%m-%d %H:%M UTC')
    if commit=$(git -C "$dir" rev-parse --short HEAD 2>/dev/null); then
        local top
        top=$(git -C "$dir" rev-parse --show-toplevel)
        if [[ -n $(git -C "$top" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
            commit="$commit + uncommitted changes in src/"
        fi
        echo "taskgate $commit ($TASKGATE_BIN, built $built, sha256 ${BIN_SHA:0:12})"
    else
        echo "taskgate binary $TASKGATE_BIN (built $built, sha256 ${BIN_SHA:0:12})"
    fi
}

BIN_SHA=$(sha256sum "$TASKGATE_BIN" | cut -d' ' -f1)
BUILD_INFO=$(describe_binary)
# The run uses a private copy: a build elsewhere during it cannot change what is measured.
cp "$TASKGATE_BIN" "$WORK/taskgate"
TASKGATE_BIN="$WORK/taskgate"

# Settings through the environment, so a binary that no longer knows one still starts: no drain
# on stop (a scenario stops up to six replicas), no access log (CPU on a 2-core box).
export TASKGATE_DRAIN_DELAY=0s TASKGATE_SHUTDOWN_TIMEOUT=2s TASKGATE_ACCESS_LOG=false

HOST_INFO=$(describe_host)
RESULTS_JSONL="$WORK/results.jsonl"
: >"$RESULTS_JSONL"
RUN_START=$(date +%s)

# --- one scenario's processes -------------------------------------------------------------

# begin_scenario NAME SECONDS MAX_REPLICAS: a fresh fake and redis-server; the files the driver
# and the timeline share. The old shared mode sizes its degraded share by the replica count.
begin_scenario() {
    SC_NAME=$1
    SC_SECONDS=$2
    SC_STARTED=${#PIDS[@]}
    SC_TARGETS="$WORK/$1.targets"
    SC_EVENTS="$WORK/$1.events"
    SC_T0="$WORK/$1.t0"
    : >"$SC_TARGETS"
    : >"$SC_EVENTS"
    rm -f "$SC_T0"
    export TASKGATE_EXPECTED_REPLICAS=$3
    local load
    read -r load _ </proc/loadavg
    SC_LOAD_NOTE="$(cpu_busy_pct)% CPU busy, load $load"
    log "$SC_NAME: $SC_SECONDS s; $SC_LOAD_NOTE"
    start_fake "$SC_NAME" --status 1 --delay-ms "$FAKE_DELAY_MS" --enforce-limit "$RATE" \
        --max-seconds $((SC_SECONDS + 120))
    start_redis "$SC_NAME"
    REDIS_PID=${PIDS[-1]}
}

# add_replica INDEX REDIS_PORT: one taskgate against the fake, sharing Redis (directly or through
# a relay's port), listed for the driver.
add_replica() {
    start_taskgate "$SC_NAME-r$1" "$FAKE_PORT" --redis-url "redis://127.0.0.1:$2" \
        --redis-prefix partition:
    echo "$1 127.0.0.1:$TG_PORT" >>"$SC_TARGETS"
}

# start_relays COUNT: partition.py relays to REDIS_PORT; sets RELAY_CONTROL and RELAY_PORTS.
start_relays() {
    local port_file="$WORK/$SC_NAME.relays"
    python3 "$DRIVER" relays --redis "127.0.0.1:$REDIS_PORT" --count "$1" \
        --port-file "$port_file" --max-seconds $((SC_SECONDS + 120)) \
        >"$WORK/$SC_NAME.relays.log" 2>&1 &
    PIDS+=("$!")
    await_port_file "$port_file" "$WORK/$SC_NAME.relays.log" "$SC_NAME: the relays"
    RELAY_CONTROL=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["control"])' "$port_file")
    mapfile -t RELAY_PORTS < <(python3 -c 'import json, sys
print("\n".join(map(str, json.load(open(sys.argv[1]))["relays"])))' "$port_file")
}

# relay ACTION RELAYS: cut or restore relays "1" or "1,2,3" (what the shell records is the
# control's answer).
relay() {
    curl -fsS --max-time 5 -X POST \
        "http://127.0.0.1:$RELAY_CONTROL/$1?relay=$2&mode=$CUT_MODE" >>"$WORK/$SC_NAME.relays.log" ||
        die "$SC_NAME: relay $1 $2 failed"
    echo >>"$WORK/$SC_NAME.relays.log"
}

# start_driver SETUP [DRIVER ARGS...]: the load in the background, bounded; sets DRIVER_PID.
start_driver() {
    local setup=$1
    shift
    timeout $((SC_SECONDS + 90)) python3 "$DRIVER" run --name "$SC_NAME" --setup "$setup" \
        --load-note "$SC_LOAD_NOTE" --targets-file "$SC_TARGETS" --stats "127.0.0.1:$FAKE_PORT" \
        --seconds "$SC_SECONDS" \
        --t0-file "$SC_T0" --events-file "$SC_EVENTS" --clients "$CLIENTS" --rate "$RATE" "$@" \
        >>"$RESULTS_JSONL" 2>"$WORK/$SC_NAME.driver.log" &
    DRIVER_PID=$!
    PIDS+=("$DRIVER_PID")
}

# at_second SECONDS: sleeps until t0 + SECONDS (t0: when the driver started its run); sets WAKE
# (time.monotonic() on waking), the time the next mark records.
at_second() {
    WAKE=$(python3 "$DRIVER" sleep-until --t0-file "$SC_T0" --at "$1") || die "$SC_NAME: no t0"
}

# mark LABEL [PHASE]: the event (done right after the last at_second) in the scenario's
# timeline; with PHASE, that phase starts then.
mark() {
    python3 "$DRIVER" mark --events-file "$SC_EVENTS" --label "$1" --phase "${2:-}" --at "$WAKE"
    log "$SC_NAME: $1"
}

# forget_pid PID: drops a process we ended ourselves from PIDS.
forget_pid() {
    local -a kept=()
    local p
    for p in "${PIDS[@]}"; do
        [[ $p == "$1" ]] || kept+=("$p")
    done
    PIDS=("${kept[@]}")
}

# restart_redis PORT: a new empty redis-server on the same port (no persistence); sets REDIS_PID.
restart_redis() {
    local i
    redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize no >>"$WORK/$SC_NAME.redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    for ((i = 0; i < 100; i++)); do
        kill -0 "$REDIS_PID" 2>/dev/null || break
        [[ $(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null) == PONG ]] && return 0
        sleep 0.05
    done
    tail -n 20 "$WORK/$SC_NAME.redis.log" >&2
    die "$SC_NAME: redis-server did not start again on port $1"
}

# end_scenario: waits for the driver's report, then stops every process of the scenario at once
# (TERM, up to 5 s, KILL).
end_scenario() {
    local i pid alive
    if ! wait "$DRIVER_PID"; then
        cat "$WORK/$SC_NAME.driver.log" >&2
        die "$SC_NAME: the driver failed"
    fi
    python3 "$DRIVER" summary "$RESULTS_JSONL" >&2
    if [[ $KEEP_LOGS == 1 ]]; then
        mkdir -p "$RESULTS_DIR/partition-logs"
        cp "$WORK/$SC_NAME".* "$WORK/$SC_NAME"-r*.* "$RESULTS_DIR/partition-logs/" 2>/dev/null || true
    fi
    local -a pids=("${PIDS[@]:SC_STARTED}")
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for ((i = 0; i < 50; i++)); do
        alive=0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=("${PIDS[@]:0:SC_STARTED}")
}

# --- the scenarios ---------------------------------------------------------------------------

steady() {
    begin_scenario steady 20 3
    for r in 0 1 2; do
        add_replica "$r" "$REDIS_PORT"
    done
    start_driver "3 replicas, all connected to Redis"
    end_scenario
}

partition() {
    begin_scenario partition 40 3
    start_relays 3
    for r in 0 1 2; do
        add_replica "$r" "${RELAY_PORTS[$r]}"
    done
    start_driver "3 replicas, each through its own relay to Redis; r1 cut off 12.5-27.5 s ($CUT_MODE)" \
        --phase "before@0"
    at_second 12.5
    relay cut 1
    mark "r1 cut off Redis ($CUT_MODE)" "r1 cut off"
    at_second 27.5
    relay restore 1
    mark "r1 restored" "after"
    end_scenario
}

redis_restart() {
    local port
    begin_scenario redis-restart 40 3
    port=$REDIS_PORT
    for r in 0 1 2; do
        add_replica "$r" "$port"
    done
    start_driver "3 replicas; redis-server SIGKILLed at 10 s, started again empty at 15 s" \
        --phase "before@0"
    at_second 10
    kill -KILL "$REDIS_PID"
    wait "$REDIS_PID" 2>/dev/null || true
    forget_pid "$REDIS_PID"
    mark "redis-server killed (SIGKILL)" "redis down"
    at_second 15
    restart_redis "$port"
    mark "redis-server started again, empty" "after"
    end_scenario
}

scale() {
    begin_scenario scale 30 6
    for r in 0 1 2; do
        add_replica "$r" "$REDIS_PORT"
    done
    start_driver "3 replicas, 3 more started at 10 s; each replica its own clients" \
        --phase "3 replicas@0"
    at_second 10
    for r in 3 4 5; do
        add_replica "$r" "$REDIS_PORT"
    done
    mark "3 more replicas starting" "6 replicas"
    end_scenario
}

busy_one() {
    local cut=$1 name="busy-one"
    if [[ $cut == cut ]]; then
        name="busy-one-cut"
    fi
    begin_scenario "$name" 20 5
    if [[ $cut == cut ]]; then
        start_relays 5
        for r in 0 1 2 3 4; do
            add_replica "$r" "${RELAY_PORTS[$r]}"
        done
        start_driver "5 replicas through relays; r1-r4 cut off from 3 s ($CUT_MODE); load on r0 only from 5 s" \
            --load-replicas 0 --load-from 5 --busy 0
        at_second 3
        relay cut 1,2,3,4
        mark "r1-r4 cut off Redis ($CUT_MODE)"
    else
        for r in 0 1 2 3 4; do
            add_replica "$r" "$REDIS_PORT"
        done
        start_driver "5 replicas; load on r0 only from 5 s" --load-replicas 0 --load-from 5 --busy 0
    fi
    end_scenario
}

for s in "${SCENARIO_LIST[@]}"; do
    case $s in
        steady) steady ;;
        partition) partition ;;
        redis-restart) redis_restart ;;
        scale) scale ;;
        busy-one) busy_one plain ;;
        busy-one-cut) busy_one cut ;;
    esac
done
RUN_S=$(($(date +%s) - RUN_START))

{
    echo "# taskgate shared budget under Redis faults (bench/partition.sh)"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host: $HOST_INFO; run took ${RUN_S} s"
    echo "- $BUILD_INFO; settings: defaults (rate limit $RATE/s, max queue wait 2 s), --redis-url," \
        "--redis-prefix partition:, TASKGATE_EXPECTED_REPLICAS = the scenario's most replicas," \
        "drain delay 0 s, access log off; credentials fake"
    echo "- upstream: bench/fake_upstream.py on loopback, --enforce-limit $RATE (RequestLimitExceeded" \
        "beyond $RATE calls in any sliding 1 s, counted on arrival, refused calls too)," \
        "--delay-ms $FAKE_DELAY_MS, every task final at once; driver: bench/partition.py," \
        "$CLIENTS closed-loop clients per loaded replica, each asking a new task as soon as" \
        "answered (after a 503 its Retry-After, at most 1 s), so demand is always above R = $RATE/s"
    echo "- calls at fake: every call that arrived (refused ones too); max in any 1 s: the busiest" \
        "sliding second of arrivals over the whole run (whole-load row) or the phase; budget use:" \
        "answered calls (not limit_exceeded) / (R x the span's seconds); calls per replica:" \
        "answered, by the flow-id block of each replica; client statuses: by the time each request" \
        "was sent (cut = no answer by the end + 3 s). Relay cut mode: $CUT_MODE."
    echo
    python3 "$DRIVER" report "$RESULTS_JSONL"
} >"$WORK/report.md"

mkdir -p "$RESULTS_DIR"
cp "$RESULTS_JSONL" "$RESULT_JSONL"
publish_report "$WORK/report.md" "$RESULT_MD"

#!/usr/bin/env bash
# Overload: how taskgate spends its 20 calls/s when more tasks are processing than that can
# refresh every second (issue 11, "Under overload, spend the budget by task").
#
# Per scenario (N tasks, mode, replicas): a fresh fake upstream (bench/fake_upstream.py, no
# signature check) that ENFORCES 20 calls in any sliding second (RequestLimitExceeded beyond),
# where each task finishes a fixed pseudo-random 4-20 s after its first call, and fresh taskgates
# with default settings (loopback listen, --upstream-endpoint the fake, fake credentials; with 3
# replicas, one fresh redis-server and --redis-url). bench/overload.py opens one connection per
# task, then all clients ask at once, until their task is final:
#   poll  GET /tasks/{id} every 1 s;     wait  GET /tasks/{id}?wait=30s, again at once;
# after a 503 both wait its Retry-After. At 6 s, 10 new tasks are asked (plain GET, until their
# first 200). Every scenario stops at N/20 + 40 s. Measured against the targets of issue 11.
#
# Usage: bench/overload.sh                       (all 16: N 20 100 300 1000 x poll wait x 1 3)
#        TASKGATE_BIN=/path/to/taskgate bench/overload.sh   (measure that binary; no build)
#        OVERLOAD_N="20 100" OVERLOAD_MODES=poll OVERLOAD_REPLICAS=1 bench/overload.sh
#        OVERLOAD_SCENARIOS="1000/poll/1 1000/wait/1" bench/overload.sh   (explicit N/mode/replicas)
#        SKIP_BUILD=1 reuses target/release/taskgate of this work tree.
#        OVERLOAD_DUMP_DIR=/tmp/dumps also writes each scenario's raw calls and round trips there.
# Writes bench/results/overload.md and overload.json and prints the table. Report only: the
# exit status is 0 whatever the targets say (1 if a scenario could not be run).

set -euo pipefail

LOG_TAG=overload
GIVEN_BIN=${TASKGATE_BIN:-}
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RATE=20 # taskgate's default TASKGATE_RATE_LIMIT and the account's limit the fake enforces
OVERLOAD_N=${OVERLOAD_N:-20 100 300 1000}
OVERLOAD_MODES=${OVERLOAD_MODES:-poll wait}
OVERLOAD_REPLICAS=${OVERLOAD_REPLICAS:-1 3}
FAKE_DELAY_MS=${FAKE_DELAY_MS:-20}
DRIVER="$BENCH_DIR/overload.py"
RESULT_MD="$RESULTS_DIR/overload.md"
RESULT_JSON="$RESULTS_DIR/overload.json"

if [[ -n ${OVERLOAD_SCENARIOS:-} ]]; then
    read -r -a SCENARIO_LIST <<<"$OVERLOAD_SCENARIOS"
else
    SCENARIO_LIST=()
    for n in $OVERLOAD_N; do
        for mode in $OVERLOAD_MODES; do
            for replicas in $OVERLOAD_REPLICAS; do
                SCENARIO_LIST+=("$n/$mode/$replicas")
            done
        done
    done
fi
MAX_N=0
for s in "${SCENARIO_LIST[@]}"; do
    IFS=/ read -r n mode replicas <<<"$s"
    if ! [[ $n =~ ^[0-9]+$ ]] || ((n < 1 || n > 5000)); then
        die "bad N in '$s' (1..5000)"
    fi
    [[ $mode == poll || $mode == wait ]] || die "bad mode in '$s' (poll or wait)"
    [[ $replicas == 1 || $replicas == 3 ]] || die "bad replicas in '$s' (1 or 3)"
    if ((n > MAX_N)); then
        MAX_N=$n
    fi
done

require_python
if ((${#SCENARIO_LIST[@]} > 0)) && [[ " ${SCENARIO_LIST[*]} " == */3\ * ]]; then
    command -v redis-server >/dev/null || die "redis-server is missing (apt-get install redis-server)"
fi

# One connection per client in the driver and as many in taskgate: raise the soft fd limit.
want_fds=$((2 * MAX_N + 1024))
if (($(ulimit -n) < want_fds)); then
    hard=$(ulimit -Hn)
    if [[ $hard == unlimited ]] || ((hard >= want_fds)); then
        ulimit -n "$want_fds"
    else
        ulimit -n "$hard"
        log "warning: the fd limit is $hard, below the $want_fds wanted for N = $MAX_N"
    fi
fi

if [[ -n $GIVEN_BIN ]]; then
    TASKGATE_BIN=$GIVEN_BIN
    SKIP_BUILD=1 # measure the binary given, build nothing
fi
begin_run overload

# What binary is measured: the commit of the work tree it was built in, when it is in one.
describe_binary() {
    local dir commit
    dir=$(cd "$(dirname "$TASKGATE_BIN")" && pwd)
    if commit=$(git -C "$dir" rev-parse --short HEAD 2>/dev/null); then
        local top
        top=$(git -C "$dir" rev-parse --show-toplevel)
        if [[ -n $(git -C "$top" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
            commit="$commit + uncommitted changes in src/"
        fi
        echo "taskgate $commit ($TASKGATE_BIN, built $(date -u -r "$TASKGATE_BIN" '+%Y-%m-%d %H:%M UTC')," \
            "sha256 ${BIN_SHA:0:12})"
    else
        echo "taskgate binary $TASKGATE_BIN (built $(date -u -r "$TASKGATE_BIN" '+%Y-%m-%d %H:%M UTC')," \
            "sha256 ${BIN_SHA:0:12})"
    fi
}

BIN_SHA=$(sha256sum "$TASKGATE_BIN" | cut -d' ' -f1)
BUILD_INFO=$(describe_binary)
# The sweep runs a private copy: a build elsewhere during it cannot change what is measured.
cp "$TASKGATE_BIN" "$WORK/taskgate"
TASKGATE_BIN="$WORK/taskgate"

load_note() {
    local busy load
    busy=$(cpu_busy_pct)
    read -r load _ </proc/loadavg
    echo "${busy}% CPU busy, load ${load}"
}

HOST_INFO=$(describe_host)
RESULTS_JSONL="$WORK/results.jsonl"
: >"$RESULTS_JSONL"
SWEEP_START=$(date +%s)

for s in "${SCENARIO_LIST[@]}"; do
    IFS=/ read -r n mode replicas <<<"$s"
    name="n$n-$mode-r$replicas"
    # Long enough to see every completion: the last task's first call (N/R + 3 s), its
    # finish (up to 20 s later) and the completion's own limit (N/R + 2 s), with room to spare.
    bound=$((n / RATE + 40))
    if ((2 * n / RATE + 30 > bound)); then bound=$((2 * n / RATE + 30)); fi
    started=${#PIDS[@]}
    load=$(load_note)
    log "$name: N = $n, mode $mode, $replicas replica(s), bound $bound s; $load"
    # The fake outlives the run by a margin, then exits by itself.
    start_fake "$name" --status 1 --finish-after-s 4 --finish-jitter-s 16 \
        --enforce-limit "$RATE" --delay-ms "$FAKE_DELAY_MS" --max-seconds $((bound + 180))
    targets=()
    if ((replicas == 1)); then
        start_taskgate "$name" "$FAKE_PORT"
        targets+=("127.0.0.1:$TG_PORT")
        setup="1 taskgate, defaults"
    else
        start_redis "$name"
        for r in 1 2 3; do
            start_taskgate "$name-$r" "$FAKE_PORT" --redis-url "redis://127.0.0.1:$REDIS_PORT"
            targets+=("127.0.0.1:$TG_PORT")
        done
        setup="3 taskgates + 1 redis-server, defaults and --redis-url; clients round-robin"
    fi
    timeout $((bound + 120)) python3 "$DRIVER" run --name "$name" --setup "$setup" \
        --load "$load" --mode "$mode" --tasks "$n" --rate "$RATE" --seconds "$bound" \
        --target "${targets[@]}" --stats "127.0.0.1:$FAKE_PORT" \
        ${OVERLOAD_DUMP_DIR:+--dump "$OVERLOAD_DUMP_DIR/$name.json"} >>"$RESULTS_JSONL" ||
        die "$name: the driver failed"
    python3 "$DRIVER" summary "$RESULTS_JSONL" >&2
    while ((${#PIDS[@]} > started)); do
        stop_last
    done
done
SWEEP_S=$(($(date +%s) - SWEEP_START))

{
    echo "# taskgate under overload: the budget spent by task (issue 11)"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host: $HOST_INFO; sweep took ${SWEEP_S} s"
    echo "- $BUILD_INFO, default settings (rate limit $RATE/s, processing TTL 1 s, max queue" \
        "wait 2 s); credentials fake (TENCENTCLOUD_SECRET_ID=AKIDEXAMPLEFAKE...)"
    echo "- upstream: bench/fake_upstream.py on loopback, --enforce-limit $RATE (RequestLimitExceeded" \
        "beyond $RATE calls in any 1 s, counted on arrival), --delay-ms $FAKE_DELAY_MS, each task final" \
        "a fixed 4-20 s after its first call; driver: bench/overload.py"
    echo "- R = $RATE/s. Completion: from the moment the fake starts answering the task final" \
        "(its first call + its 4-20 s) to the moment its client receives the final answer." \
        "Budget use: calls at the fake over the most a sliding window of R allows (R x ⌈span⌉)," \
        "from t0 until the last client learned its final status, and until fewer than R clients" \
        "still waited. In mode wait a client hears nothing before its task is final, so" \
        "\"first answered\" is taskgate's first upstream answer for the task there (upstream)." \
        "✓/✗: the target of issue 11 met or not; \"> x\": some task was not seen by the end (x a lower bound; ? when that bound is within the target)."
    echo
    python3 "$DRIVER" report "$RESULTS_JSONL" --json "$WORK/report.json"
} >"$WORK/report.md"

mkdir -p "$RESULTS_DIR"
cp "$WORK/report.json" "$RESULT_JSON"
publish_report "$WORK/report.md" "$RESULT_MD"

#!/usr/bin/env bash
# Upstream-call-count scenarios: how many calls taskgate makes to its upstream under load.
#
# Each scenario starts a fresh counting fake upstream (bench/fake_upstream.py, which does not
# check signatures) and a fresh taskgate pointed at it over plain http on loopback, drives
# taskgate with bench/drive.py, then reads the fake's GET /stats:
#
#   herd        500 concurrent GETs of one uncached task; upstream answers in 1000 ms -> 1 call
#   storm       upstream always answers processing; 50 callers poll one task for 5 s
#               -> one call per 1 s processing TTL, about 5-6
#   saturation  100 distinct new tasks at once, --max-queue-wait 10s -> all 200, at most 20
#               calls in any 1 s window, done in about 4-5.5 s
#   throttled   upstream throttles every 2nd call; 40 distinct tasks at once,
#               --max-queue-wait 10s -> answers by status and calls, reported
#   replicas    one redis-server, three taskgates sharing it
#               (--max-queue-wait 15s): 150 distinct new tasks round-robin through the three at
#               once -> all 200, 150 calls, at most 20 in any 1 s; the same 150 through other
#               replicas -> 0 calls; 300 callers on one slow (1000 ms) task over the three -> 1 call
#   longpoll    upstream finishes each task 10-11 s after its first call (a fixed jitter per
#               task, so finishes do not line up with 1 s polls); callers that each want
#               one task's final status: "GET, sleep 1 s, repeat" against "GET ?wait=30s,
#               repeat", 100 callers and 10, each run on a fresh taskgate and fake -> round
#               trips, upstream calls, and how soon after the finish each caller learned it
#
# Usage: bench/scenarios.sh              (SKIP_BUILD=1 reuses target/release/taskgate)
#        SCENARIOS="herd storm" bench/scenarios.sh    (default: all six)
# Writes bench/results/scenarios.md and prints it. Exits 1 if an expectation failed.

set -euo pipefail

LOG_TAG=scenarios
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RESULT_FILE="$RESULTS_DIR/scenarios.md"
SCENARIOS=${SCENARIOS:-herd storm saturation throttled replicas longpoll}
DRIVE="$BENCH_DIR/drive.py"

require_python
begin_run scenarios

HOST_INFO=$(describe_host)
RESULTS_JSONL="$WORK/results.jsonl"
: >"$RESULTS_JSONL"

# drive NAME SETUP BOUND_S DRIVE-ARGS...: runs drive.py against the fake on FAKE_PORT, bounded
# by BOUND_S seconds (drive.py also caps every request and the run), and keeps its JSON line.
drive() {
    local name=$1 setup=$2 bound=$3
    shift 3
    timeout "$bound" python3 "$DRIVE" "$@" --name "$name" --setup "$setup" \
        --stats "127.0.0.1:$FAKE_PORT" >>"$RESULTS_JSONL" || die "$name: the driver failed"
    tail -n1 "$RESULTS_JSONL" >&2
}

# scenario NAME "FAKE FLAGS" "TASKGATE FLAGS" DRIVE-ARGS...
# Fake flags and taskgate flags are space-separated words (no quoting inside).
scenario() {
    local name=$1 fake_flags=$2 tg_flags=$3
    shift 3
    local -a fake_args tg_args
    read -r -a fake_args <<<"$fake_flags"
    read -r -a tg_args <<<"$tg_flags"

    log "$name: fake upstream ${fake_flags:-(defaults)}"
    start_fake "$name" "${fake_args[@]}"
    start_taskgate "$name" "$FAKE_PORT" "${tg_args[@]}"
    log "$name: taskgate on 127.0.0.1:$TG_PORT ${tg_flags}"

    local setup="fake: ${fake_flags:-defaults}"
    [[ -n $tg_flags ]] && setup="$setup; taskgate: $tg_flags"
    drive "$name" "$setup" 180 "$@" --target "127.0.0.1:$TG_PORT"

    stop_last # taskgate
    stop_last # fake upstream
}

# Three taskgates sharing one redis-server and one fake; three steps against the same set.
replicas() {
    local r fake_flags="--status 1 --delay-ms 20"
    local -a targets=()
    start_redis replicas
    start_fake replicas --status 1 --delay-ms 20
    local tg_flags="--redis-url redis://127.0.0.1:PORT --redis-prefix bench:"
    tg_flags="$tg_flags --max-queue-wait 15s"
    for r in 1 2 3; do
        start_taskgate "replicas-$r" "$FAKE_PORT" --redis-url "redis://127.0.0.1:$REDIS_PORT" \
            --redis-prefix bench: --max-queue-wait 15s
        targets+=("127.0.0.1:$TG_PORT")
    done
    log "replicas: redis on $REDIS_PORT, taskgates on ${targets[*]}, fake on $FAKE_PORT"
    local setup="3 replicas + 1 redis; fake: $fake_flags; taskgate: $tg_flags"

    drive replicas-new "$setup; task i through replica i mod 3" 120 \
        burst --flow-ids 6001-6150 --callers 150 --target "${targets[@]}" \
        --expect-all-200 --expect-calls 150 150 --expect-max-window 20
    drive replicas-again "same 150 tasks, each through another replica" 120 \
        burst --flow-ids 6001-6150 --callers 150 --target "${targets[@]}" --target-offset 1 \
        --expect-all-200 --expect-calls 0 0
    fake_control "$FAKE_PORT" '{"delay_ms": 1000}'
    drive replicas-herd "fake now --delay-ms 1000; one uncached task, callers over the 3" 120 \
        burst --flow-ids 6500 --callers 300 --target "${targets[@]}" \
        --expect-all-200 --expect-calls 1 1

    for r in 1 2 3 4 5; do # three taskgates, the fake, redis
        stop_last
    done
}

# longpoll_run NAME STYLE CALLERS FLOW-IDS: one fresh fake (tasks finish 10 s after their first
# call) and one fresh taskgate (defaults) per run.
longpoll_run() {
    local name=$1 style=$2 callers=$3 ids=$4 how
    start_fake "$name" --status 1 --finish-after-s 10 --finish-jitter-s 1
    start_taskgate "$name" "$FAKE_PORT"
    log "$name: $callers callers, style $style, taskgate on 127.0.0.1:$TG_PORT"
    if [[ $style == interval ]]; then
        how="each caller: GET, sleep 1 s, repeat until not processing"
    else
        how="each caller: GET ?wait=30s, repeat until not processing"
    fi
    drive "$name" "$how; fake: --finish-after-s 10 --finish-jitter-s 1; taskgate: defaults" 240 \
        chase --style "$style" --flow-ids "$ids" --callers "$callers" --seconds 90 \
        --target "127.0.0.1:$TG_PORT" --expect-all-final --expect-max-window 20
    stop_last # taskgate
    stop_last # fake upstream
}

for name in $SCENARIOS; do
    case $name in
        herd)
            scenario herd "--delay-ms 1000 --status 1" "" \
                burst --flow-ids 1001 --callers 500 \
                --expect-all-200 --expect-calls 1 1
            ;;
        storm)
            scenario storm "--status 0 --delay-ms 20" "" \
                poll --flow-ids 2001 --callers 50 --seconds 5 \
                --expect-all-200 --expect-calls 5 6
            ;;
        saturation)
            scenario saturation "--status 1 --delay-ms 20" "--max-queue-wait 10s" \
                burst --flow-ids 3001-3100 --callers 100 \
                --expect-all-200 --expect-max-window 20 --expect-wall 4 5.5
            ;;
        throttled)
            scenario throttled "--status 1 --delay-ms 20 --throttle-every 2" "--max-queue-wait 10s" \
                burst --flow-ids 4001-4040 --callers 40 --expect-max-window 20
            ;;
        replicas) replicas ;;
        longpoll)
            longpoll_run longpoll-poll-1s interval 100 7001-7100
            longpoll_run longpoll-wait-30s wait 100 7001-7100
            longpoll_run longpoll-poll-1s-10 interval 10 7201-7210
            longpoll_run longpoll-wait-30s-10 wait 10 7201-7210
            ;;
        *) die "unknown scenario '$name' (herd, storm, saturation, throttled, replicas, longpoll)" ;;
    esac
done

{
    echo "# taskgate upstream-call scenarios"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host: $HOST_INFO"
    echo "- $(describe_build), default flags unless listed (rate limit 20/s, processing TTL 1s);" \
        "upstream: bench/fake_upstream.py on loopback (no signature check); driver: bench/drive.py"
    echo "- upstream calls and the 1 s window are counted by the fake on arrival"
    echo
    python3 "$DRIVE" report "$RESULTS_JSONL"
} >"$WORK/report.md"

publish_report "$WORK/report.md" "$RESULT_FILE"
if grep -q '"verdict": "FAIL"' "$RESULTS_JSONL"; then
    log "some expectations failed"
    exit 1
fi

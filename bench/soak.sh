#!/usr/bin/env bash
# Soak: minutes of mixed load on one taskgate while its upstream goes through faults.
#
# One counting fake upstream (bench/fake_upstream.py; task 8001 always processing, every other
# task final at once) and one taskgate (--upstream-timeout 1s, access log off) on loopback.
# bench/soak.py sends about SOAK_RATE (150) requests/s for SOAK_SECONDS (180), in a 7:2:1 mix:
# cache hits on five hot final tasks, new distinct tasks, and GET /tasks/8001?wait=5s; and
# moves the fake through six equal phases with POST /control:
#   healthy -> 500 on every 3rd call -> connection closed on every 4th call
#   -> every answer 2 s late (past the 1 s upstream timeout) -> 500 always (outage) -> healthy
# It reads /metrics every second (breaker state, upstream attempts by outcome) and taskgate's
# VmRSS every 5 s.
#
# Note: new tasks alone ask for rate x 20% = 30 upstream calls/s against a budget of 20/s, so
# even the healthy phase answers some of them 503 (budget wait over): that is reported.
#
# Usage: bench/soak.sh                       (SKIP_BUILD=1 reuses target/release/taskgate)
#        SOAK_SECONDS=600 SOAK_RATE=100 bench/soak.sh
# Writes bench/results/soak.md and prints it. Exits 1 if the verdict is FAIL.

set -euo pipefail

LOG_TAG=soak
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RESULT_FILE="$RESULTS_DIR/soak.md"
SOAK_SECONDS=${SOAK_SECONDS:-180}
SOAK_RATE=${SOAK_RATE:-150}
if ! [[ $SOAK_SECONDS =~ ^[0-9]+$ ]] || ((SOAK_SECONDS < 30 || SOAK_SECONDS > 3600)); then
    die "SOAK_SECONDS must be a whole number of seconds in 30..3600"
fi
if ! [[ $SOAK_RATE =~ ^[0-9]+$ ]] || ((SOAK_RATE < 1 || SOAK_RATE > 1000)); then
    die "SOAK_RATE must be a whole number of requests per second in 1..1000"
fi

require_python
begin_run soak

HOST_INFO=$(describe_host)
TG_FLAGS=(--upstream-timeout 1s --access-log false)

# The fake outlives the run by a margin, then stops by itself even if this script is killed.
start_fake soak --status 1 --processing-ids 8001 --max-seconds $((SOAK_SECONDS + 180))
start_taskgate soak "$FAKE_PORT" "${TG_FLAGS[@]}"
log "taskgate (pid $TG_PID) on 127.0.0.1:$TG_PORT, fake on 127.0.0.1:$FAKE_PORT;" \
    "$SOAK_RATE requests/s for $SOAK_SECONDS s, six phases of $((SOAK_SECONDS / 6)) s"

# Bounded twice: soak.py stops sending at SOAK_SECONDS and has a hard bound of its own.
timeout $((SOAK_SECONDS + 120)) python3 "$BENCH_DIR/soak.py" run \
    --target "127.0.0.1:$TG_PORT" --fake "127.0.0.1:$FAKE_PORT" --pid "$TG_PID" \
    --seconds "$SOAK_SECONDS" --rate "$SOAK_RATE" --out "$WORK/soak.json" ||
    die "the soak driver failed (taskgate log: $(tail -n 5 "$WORK/soak.taskgate.log" 2>/dev/null))"

verdict=0
{
    echo "# taskgate soak: mixed load with upstream faults"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host: $HOST_INFO"
    echo "- $(describe_build); taskgate flags: ${TG_FLAGS[*]}, otherwise defaults" \
        "(rate limit 20/s, processing TTL 1s, max queue wait 2s, breaker after 5 failures for 5s)"
    echo "- load: bench/soak.py, $SOAK_RATE requests/s open loop for $SOAK_SECONDS s," \
        "7:2:1 hot (five cached final tasks) : new (a distinct new task each) :" \
        "wait (GET /tasks/8001?wait=5s, a task the fake always answers processing);" \
        "six phases of $((SOAK_SECONDS / 6)) s set by POST /control on bench/fake_upstream.py"
    echo "- new tasks alone want $((SOAK_RATE / 5)) upstream calls/s; the budget is 20/s," \
        "so some are answered 503 in every phase by design"
    echo "- answers by HTTP status are counted per phase by send time; upstream calls are counted" \
        "by the fake on arrival (per phase), upstream attempts by outcome from taskgate's /metrics"
    echo
    python3 "$BENCH_DIR/soak.py" report "$WORK/soak.json" || verdict=1
} >"$WORK/report.md"

publish_report "$WORK/report.md" "$RESULT_FILE"
exit "$verdict"

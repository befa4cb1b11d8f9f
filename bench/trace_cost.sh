#!/usr/bin/env bash
# What traces cost on the cache-hit path, measured as bench/cache_hit.sh measures a hit:
# taskgate --demo --workers 1 pinned to core 0, /tasks/42 warmed to a cached final answer,
# `wrk -t1 -c64 -d10s --latency` pinned to core 1 after a warm-up, loopback only, access log off
# (the most sensitive setting: nothing else on the path to hide a cost).
#
# Variants, run in turn ROUNDS times (interleaved, so drift on this shared machine hits them all):
#   1. BASE_BIN, when set: a build from before traces existed (e.g. main), for "no change";
#   2. traces not configured (no OTEL_* endpoint): the shipped default;
#   3. traces on, OTEL_TRACES_SAMPLER=always_off: propagation and span calls, nothing sampled;
#   4. traces on, OTEL_TRACES_SAMPLER=always_on: every request a span, exported to a local sink
#      collector (python, pinned to core 1 with wrk, answering every export 200).
#
# Usage: bench/trace_cost.sh    (ROUNDS=3 DURATION=10s CONNECTIONS=64 WARMUP=2s IDLE_WAIT=60s)
#        BASE_BIN=/path/to/old/taskgate SKIP_BUILD=1 bench/trace_cost.sh
#        TRACED=0 BASE_BIN=... bench/trace_cost.sh   (only variants 1 and 2: the "no change" check)
# Writes bench/results/trace_cost.md and prints the same table.

set -euo pipefail

LOG_TAG=trace_cost
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RESULT_FILE="$RESULTS_DIR/trace_cost.md"
ROUNDS=${ROUNDS:-3}
DURATION_SECS=$(to_secs "${DURATION:-10s}")
WARMUP_SECS=$(to_secs "${WARMUP:-2s}")
IDLE_WAIT_SECS=$(to_secs "${IDLE_WAIT:-60s}")
CONNECTIONS=${CONNECTIONS:-64}
BASE_BIN=${BASE_BIN:-}
TRACED=${TRACED:-1}
[[ $ROUNDS =~ ^[1-9]$ ]] || die "ROUNDS must be 1..9"
{ [[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] && ((CONNECTIONS <= 10000)); } || die "CONNECTIONS must be 1..10000"
((DURATION_SECS >= 1 && DURATION_SECS <= 600)) || die "DURATION must be 1s..10m"
[[ -z $BASE_BIN || -x $BASE_BIN ]] || die "BASE_BIN=$BASE_BIN is not an executable"
command -v wrk >/dev/null || die "wrk is missing: apt-get install -y wrk"
command -v taskset >/dev/null || die "taskset is missing (util-linux)"

begin_run trace_cost

# The sink collector: answers every OTLP/HTTP export 200, counts them.
SINK_PORT=$(free_port)
taskset -c 1 python3 -c '
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
' "$SINK_PORT" &
PIDS+=("$!")
SINK_PID=$!
SINK="http://127.0.0.1:$SINK_PORT"

# measure NAME BIN [VAR=VALUE...]: start, warm /tasks/42, wrk; appends
# "name|rps|p50|p99|spans|other CPU".
measure() {
    local name=$1 bin=$2 port url i spans pid all0 srv0 kids0 sink0 other
    shift 2
    port=$(free_port)
    url="http://127.0.0.1:$port/tasks/42"
    env TASKGATE_DRAIN_DELAY=0s TASKGATE_SHUTDOWN_TIMEOUT=2s RUST_LOG=warn TASKGATE_ACCESS_LOG=false \
        "$@" taskset -c 0 "$bin" --demo --workers 1 --listen "127.0.0.1:$port" \
        >"$WORK/taskgate.log" 2>&1 &
    PIDS+=("$!")
    pid=$!
    wait_http "$!" "http://127.0.0.1:$port/healthz" || die "taskgate did not start: $(cat "$WORK/taskgate.log")"
    for ((i = 0; i < 60; i++)); do
        curl -s --max-time 5 "$url" | grep -q '"status":"succeeded"' && break
        sleep 0.25
    done
    grep -qi '^x-cache: hit' <(curl -s -D - -o /dev/null --max-time 2 "$url") ||
        die "$name: /tasks/42 is not answered from the cache"
    wait_idle
    ((WARMUP_SECS > 0)) && taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${WARMUP_SECS}s" "$url" >/dev/null
    all0=$(all_user_ticks) srv0=$(tree_user_ticks "$pid") kids0=$(children_user_ticks)
    sink0=$(tree_user_ticks "$SINK_PID")
    taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION_SECS}s" --latency "$url" >"$WORK/wrk.txt"
    other=$(($(all_user_ticks) - all0 - ($(tree_user_ticks "$pid") - srv0) -
        ($(children_user_ticks) - kids0) - ($(tree_user_ticks "$SINK_PID") - sink0)))
    other=$((other < 0 ? 0 : other * 100 / (DURATION_SECS * HZ)))
    spans=$(curl -s "http://127.0.0.1:$port/metrics" | awk '
        /^taskgate_trace_spans_exported_total / {e = $2}
        /^taskgate_trace_spans_dropped_total/ {d += $2}
        END {printf "%d exported, %d dropped", e, d}')
    stop_last
    log "$name: $(awk '/^Requests\/sec:/ {print $2}' "$WORK/wrk.txt") req/s; spans: $spans; other CPU $other%"
    RESULTS+=("$name|$(awk '/^Requests\/sec:/ {print $2}' "$WORK/wrk.txt")|$(awk '$1 == "50%" {print $2}' "$WORK/wrk.txt")|$(awk '$1 == "99%" {print $2}' "$WORK/wrk.txt")|$spans|$other%")
}

RESULTS=()
VARIANTS=()
[[ -n $BASE_BIN ]] && VARIANTS+=("before traces (BASE_BIN)")
VARIANTS+=("traces not configured")
((TRACED == 1)) && VARIANTS+=("traces on, always_off" "traces on, always_on (all exported)")
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round of $ROUNDS"
    [[ -n $BASE_BIN ]] && measure "${VARIANTS[0]}" "$BASE_BIN"
    measure "traces not configured" "$TASKGATE_BIN"
    ((TRACED == 1)) || continue
    measure "traces on, always_off" "$TASKGATE_BIN" OTEL_EXPORTER_OTLP_ENDPOINT="$SINK" \
        OTEL_TRACES_SAMPLER=always_off
    measure "traces on, always_on (all exported)" "$TASKGATE_BIN" \
        OTEL_EXPORTER_OTLP_ENDPOINT="$SINK" OTEL_TRACES_SAMPLER=always_on OTEL_BSP_SCHEDULE_DELAY=200
done

median() { sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
{
    echo "# taskgate trace cost on the cache-hit path"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host: $(describe_host); $(describe_build)"
    echo "- \`--demo --workers 1\` on core 0, access log off, GET /tasks/42 (cached final answer);" \
        "\`wrk -t1 -c$CONNECTIONS -d${DURATION_SECS}s --latency\` on core 1 after ${WARMUP_SECS}s;" \
        "$ROUNDS interleaved rounds; the sink collector shares core 1 with wrk; medians leave out" \
        "runs with other CPU above 20% (someone else's work on this machine)"
    echo
    echo "| variant | requests/s (rounds) | **median** | vs not configured | p99 (rounds) | other CPU (rounds) | spans (last round) |"
    echo "| --- | --- | ---: | ---: | --- | --- | --- |"
    base=""
    for variant in "${VARIANTS[@]}"; do
        rps=() p99=() others=() spans=""
        for row in "${RESULTS[@]}"; do
            IFS='|' read -r name r _ p s o <<<"$row"
            [[ $name == "$variant" ]] || continue
            rps+=("$r") p99+=("$p") others+=("$o") spans=$s
        done
        # The median leaves out runs someone else's work disturbed (other CPU above 20%), unless
        # every run was.
        calm=()
        for i in "${!rps[@]}"; do
            ((${others[$i]%\%} <= 20)) && calm+=("${rps[$i]}")
        done
        ((${#calm[@]} > 0)) || calm=("${rps[@]}")
        med=$(printf '%s\n' "${calm[@]}" | median)
        [[ $variant == "traces not configured" ]] && base=$med
        echo "$variant|${rps[*]}|$med|${p99[*]}|${others[*]}|$spans" >>"$WORK/rows.txt"
    done
    while IFS='|' read -r variant rps med p99 others spans; do
        ratio=$(awk -v a="$med" -v b="$base" 'BEGIN { printf "%.3f", a / b }')
        echo "| $variant | ${rps// / \/ } | **$med** | $ratio | ${p99// / \/ } | ${others// / \/ } | $spans |"
    done <"$WORK/rows.txt"
} >"$WORK/report.md"

publish_report "$WORK/report.md" "$RESULT_FILE"

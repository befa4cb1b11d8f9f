#!/usr/bin/env bash
# Memory of the answer cache: RSS per final answer and the byte bound, measured two ways.
#
#   1. Direct: benches/cache_memory.rs fills final answers through the cache's own API in a
#      process of its own per run (release profile, the allocator taskgate ships) and reports
#      VmRSS growth per answer, fill time and hit throughput on one core:
#        - 1 000 000 answers, no bound, neighbouring flow ids and flow ids spread far apart;
#        - a BOUND-byte cache (8 MiB) filled far past it, neighbouring and spread.
#   2. Through HTTP: taskgate release, TASKGATE_CACHE_CAPACITY=BOUND, in front of a fake
#      upstream (final answers at once, random UUID RequestIds: the benchmark binary's fast one,
#      and bench/fake_upstream.py, slow), asked distinct flow ids by wrk (a Lua counter:
#      neighbouring, then 64 apart) for HTTP_SECS each; taskgate's VmRSS sampled every second.
#
# The bound holds when RSS growth stays within 1.25 x BOUND + 4 MiB.
# Usage: bench/cache_memory.sh    (COUNT=1000000 BOUND=8388608 HTTP_SECS=60 HIT_SECS=3)
#        SKIP_BUILD=1 bench/cache_memory.sh    PARTS="direct" / PARTS="http"
# Writes bench/results/cache_memory.md and prints the same tables. All traffic is loopback.

set -euo pipefail

LOG_TAG=cache_memory
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COUNT=${COUNT:-1000000}
BOUND=${BOUND:-8388608}
HTTP_SECS=${HTTP_SECS:-60}
HIT_SECS=${HIT_SECS:-3}
PARTS=${PARTS:-direct http}
RESULT_FILE="$RESULTS_DIR/cache_memory.md"
for value in "$COUNT" "$BOUND" "$HTTP_SECS" "$HIT_SECS"; do
    [[ $value =~ ^[1-9][0-9]*$ ]] || die "COUNT, BOUND, HTTP_SECS and HIT_SECS are whole numbers"
done
((COUNT <= 20000000 && HTTP_SECS <= 600 && HIT_SECS <= 60)) || die "COUNT <= 20M, HTTP_SECS <= 600, HIT_SECS <= 60"
command -v wrk >/dev/null || die "wrk is missing: apt-get install -y wrk"

begin_run cache_memory
LIMIT=$((BOUND * 5 / 4 + 4 * 1024 * 1024))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

BENCH_BIN=""
if [[ -n $PARTS ]]; then
    if [[ $SKIP_BUILD != 1 ]]; then
        log "cargo bench --bench cache_memory --no-run"
        (cd "$REPO_DIR" && cargo bench --bench cache_memory --no-run) >"$WORK/bench-build.log" 2>&1 ||
            { tail -n 20 "$WORK/bench-build.log" >&2; die "the benchmark did not build"; }
    fi
    BENCH_BIN=$(find "$REPO_DIR/target/release/deps" -maxdepth 1 -type f -executable \
        -name 'cache_memory-*' -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2)
    [[ -x $BENCH_BIN ]] || die "no cache_memory benchmark binary (run without SKIP_BUILD=1)"
fi

# direct IDS COUNT CAPACITY: one run of the benchmark binary; appends its JSON line.
direct() {
    log "direct: $1 ids, $2 answers, capacity $3"
    timeout 600 "$BENCH_BIN" --ids "$1" --count "$2" --capacity "$3" --hit-secs "$HIT_SECS" \
        | tee -a "$WORK/direct.jsonl" >&2
}

# start_fast_fake NAME: the benchmark binary's fast fake upstream (--fake-upstream); sets FAKE_PORT.
start_fast_fake() {
    local port_file="$WORK/$1.fast-port" i
    "$BENCH_BIN" --fake-upstream 0 >"$port_file" 2>"$WORK/$1.fast.log" &
    PIDS+=("$!")
    for ((i = 0; i < 100; i++)); do
        [[ -s $port_file ]] && break
        sleep 0.05
    done
    [[ -s $port_file ]] || die "$1: the fast fake upstream did not start"
    FAKE_PORT=$(head -n 1 "$port_file")
}

# http_fill IDS STEP FAKE: taskgate against a fake (fast: the benchmark binary's, some 10 000
# answers/s; python: bench/fake_upstream.py, a few hundred/s, so the cache fills slowly while
# each fetch waits), wrk asking distinct ids for HTTP_SECS.
http_fill() {
    local ids=$1 step=$2 fake=$3 rss0 peak=0 rss sampler metrics entries size requests
    if [[ $fake == fast ]]; then
        start_fast_fake "$ids"
    else
        start_fake "$ids" --status 1 --max-seconds $((HTTP_SECS + 120))
    fi
    TASKGATE_CACHE_CAPACITY=$BOUND TASKGATE_RATE_LIMIT=10000 TASKGATE_ACCESS_LOG=false \
        TASKGATE_MAX_QUEUE=100000 TASKGATE_DRAIN_DELAY=0s \
        start_taskgate "$ids" "$FAKE_PORT" --workers 1
    # A few lookups first, so what grows after is the cache.
    for i in 1 2 3; do curl -s -o /dev/null "http://127.0.0.1:$TG_PORT/tasks/$((i * 7919))"; done
    rss0=$(awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$TG_PID/status")
    cat >"$WORK/ids.lua" <<LUA
counter = 0
request = function()
    counter = counter + 1
    return wrk.format("GET", "/tasks/" .. (counter * $step))
end
LUA
    (
        while kill -0 "$TG_PID" 2>/dev/null; do
            awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$TG_PID/status" 2>/dev/null || true
            sleep 1
        done
    ) >"$WORK/$ids.rss" &
    sampler=$!
    log "http: $ids ids (step $step), wrk -t1 -c16 -d${HTTP_SECS}s against taskgate (bound $BOUND)"
    timeout $((HTTP_SECS + 30)) wrk -t1 -c16 -d"${HTTP_SECS}s" -s "$WORK/ids.lua" \
        "http://127.0.0.1:$TG_PORT" >"$WORK/$ids.wrk" 2>&1 || true
    sleep 1
    metrics=$(curl -s "http://127.0.0.1:$TG_PORT/metrics")
    rss=$(awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$TG_PID/status")
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    peak=$(sort -n "$WORK/$ids.rss" | tail -n 1)
    entries=$(awk '$1 == "taskgate_cache_entries" {print $2}' <<<"$metrics")
    size=$(awk '$1 == "taskgate_cache_weighted_size_bytes" {print $2}' <<<"$metrics")
    requests=$(awk '/requests in/ {print $1}' "$WORK/$ids.wrk")
    local non2xx
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$WORK/$ids.wrk")
    HTTP_ROWS+=("$ids|$fake|$requests|${non2xx:-0}|$entries|$(mib "$size")|$(mib "$rss0")|$(mib $((rss - rss0)))|$(mib $((peak - rss0)))|$(mib "$LIMIT")|$( ((peak - rss0 <= LIMIT)) && echo yes || echo NO)")
    stop_last
    stop_last
}

HTTP_ROWS=()
if [[ $PARTS == *direct* ]]; then
    direct neighbouring "$COUNT" 1099511627776
    direct spread "$COUNT" 1099511627776
    direct neighbouring $((COUNT * 2)) "$BOUND"
    direct spread $((COUNT / 2)) "$BOUND"
fi
if [[ $PARTS == *http* ]]; then
    http_fill neighbouring 1 fast
    http_fill spread 64 fast
    http_fill spread 64 python
fi

{
    echo "# taskgate cache memory"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host: $(describe_host)"
    echo "- $(describe_build); bound for the bounded runs: $BOUND bytes ($(mib "$BOUND") MiB)," \
        "RSS growth allowed: 1.25 x bound + 4 MiB = $(mib "$LIMIT") MiB"
    if [[ -s $WORK/direct.jsonl ]]; then
        echo
        echo "Direct fill through the cache's API (one process per row; hits on one core):"
        echo
        echo "| ids | asked | bound | answers held | moka entries | RSS growth | peak growth | RSS / answer | weight / answer | fill | hits/s (random held ids) | hits/s (one hot id) |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        python3 - "$WORK/direct.jsonl" "$LIMIT" <<'PY'
import json, sys
limit = int(sys.argv[2])
for line in open(sys.argv[1]):
    r = json.loads(line)
    bound = "none" if r["capacity"] >= 1 << 40 else f'{r["capacity"] / 1048576:.0f} MiB'
    peak = r["rss_growth_peak"] / 1048576
    flag = "" if r["capacity"] >= 1 << 40 else (" (within)" if r["rss_growth_peak"] <= limit else " (OVER)")
    print(f'| {r["ids"]} | {r["count"]:,} | {bound} | {r["held"]:,} | {r["moka_entries"]:,} | '
          f'{r["rss_growth"] / 1048576:.1f} MiB | {peak:.1f} MiB{flag} | {r["rss_per_answer"]:.0f} B | '
          f'{r["weight_per_answer"]:.0f} B | {r["fill_secs"]:.2f} s | {r["hits_per_sec_spread"]:,.0f} | '
          f'{r["hits_per_sec_hot"]:,.0f} |'.replace(",", " "))
PY
    fi
    if ((${#HTTP_ROWS[@]} > 0)); then
        echo
        echo "Through HTTP lookups (taskgate release, 1 worker, bound $(mib "$BOUND") MiB, fake upstream):"
        echo
        echo "| ids | fake upstream | requests | non-2xx | answers held | weighted size (MiB) | RSS at start (MiB) | RSS growth (MiB) | peak growth (MiB) | allowed (MiB) | within |"
        echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        for row in "${HTTP_ROWS[@]}"; do
            echo "| ${row//|/ | } |"
        done
    fi
} >"$WORK/report.md"
publish_report "$WORK/report.md" "$RESULT_FILE"

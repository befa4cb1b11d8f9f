#!/usr/bin/env bash
# Cache-hit throughput and latency of taskgate against two baselines on this machine.
#
#   1. taskgate --demo --workers 1, with /tasks/42 warmed to a final (cached 24h) answer, as
#      shipped (access log on) and with TASKGATE_ACCESS_LOG=false;
#   2. nginx proxy_cache HIT of the same bytes (1 worker, open_file_cache, sendfile off);
#   3. a bare actix-web handler returning the same bytes (bench/bare-actix, 1 worker).
#
# Every server runs alone, pinned to core 0; wrk is pinned to core 1. All traffic is loopback.
# Usage: bench/cache_hit.sh     (DURATION=10s CONNECTIONS=64 WARMUP=2s IDLE_WAIT=60s by default)
#        DURATION=30s CONNECTIONS=128 bench/cache_hit.sh
#        SKIP_BUILD=1 bench/cache_hit.sh     (reuse the release binaries already built)
#        BASELINE_BIN=/tmp/taskgate-main bench/cache_hit.sh   (also measures that taskgate build,
#                                            e.g. main's, in the same run: two more rows)
# Writes bench/results/cache_hit.md and prints the same table.

set -euo pipefail

LOG_TAG=cache_hit
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RESULT_FILE="$RESULTS_DIR/cache_hit.md"
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-2s}
IDLE_WAIT=${IDLE_WAIT:-60s}
FLOW_ID=42
SERVER_CORE=0
LOAD_CORE=1

BARE_DIR="$BENCH_DIR/bare-actix"
BARE_BIN="$BARE_DIR/target/release/bare-actix"
NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}
WRK_BIN=${WRK_BIN:-wrk}

DURATION_SECS=$(to_secs "$DURATION")
WARMUP_SECS=$(to_secs "$WARMUP")
IDLE_WAIT_SECS=$(to_secs "$IDLE_WAIT")
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive number"
((CONNECTIONS <= 10000)) || die "CONNECTIONS must be at most 10000"
((DURATION_SECS >= 1 && DURATION_SECS <= 600)) || die "DURATION must be 1s..10m"
((WARMUP_SECS <= 60)) || die "WARMUP must be at most 60s"
((IDLE_WAIT_SECS <= 600)) || die "IDLE_WAIT must be at most 10m"

command -v taskset >/dev/null || die "taskset is missing (util-linux)"
command -v "$WRK_BIN" >/dev/null || die "wrk is missing: apt-get install -y wrk"
[[ -x $NGINX_BIN ]] || die "$NGINX_BIN is missing: apt-get install -y nginx-light"
command -v curl >/dev/null || die "curl is missing"
command -v python3 >/dev/null || die "python3 is missing (used to pick free ports)"
if (($(nproc) < 2)); then
    log "warning: fewer than 2 cores; server and wrk will share a core"
fi

begin_run bench "$BARE_DIR/Cargo.toml"
[[ -x $BARE_BIN ]] || die "$BARE_BIN is missing (run without SKIP_BUILD=1)"

ROWS=()
BARE_RPS=""


# run_wrk NAME URL SERVER-PID: an unrecorded warm-up, then the measured run; adds a table row.
run_wrk() {
    local name=$1 url=$2 server_pid=$3 out="$WORK/wrk-$1.txt" bound
    local rps p50 p99 avg socket_errors non2xx resp_bytes
    local all0 all1 srv0 srv1 kids0 kids1 other
    bound=$((DURATION_SECS + 30))
    wait_idle
    if ((WARMUP_SECS > 0)); then
        timeout $((WARMUP_SECS + 30)) taskset -c "$LOAD_CORE" "$WRK_BIN" -t1 -c"$CONNECTIONS" \
            -d"${WARMUP_SECS}s" "$url" >/dev/null
    fi
    log "$name: wrk -t1 -c$CONNECTIONS -d${DURATION_SECS}s --latency $url"
    all0=$(all_user_ticks)
    srv0=$(tree_user_ticks "$server_pid")
    kids0=$(children_user_ticks)
    timeout "$bound" taskset -c "$LOAD_CORE" "$WRK_BIN" -t1 -c"$CONNECTIONS" \
        -d"${DURATION_SECS}s" --latency "$url" >"$out"
    all1=$(all_user_ticks)
    srv1=$(tree_user_ticks "$server_pid")
    kids1=$(children_user_ticks)
    other=$(((all1 - all0) - (srv1 - srv0) - (kids1 - kids0)))
    other=$((other < 0 ? 0 : other * 100 / (DURATION_SECS * HZ)))
    if ((other > 20)); then
        log "warning: other processes used ${other}% of a core during the $name run"
    fi
    cat "$out" >&2
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(awk '$1 == "50%" {print $2}' "$out")
    p99=$(awk '$1 == "99%" {print $2}' "$out")
    avg=$(awk '$1 == "Latency" && $2 != "Distribution" {print $2; exit}' "$out")
    socket_errors=$(awk '/Socket errors:/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i}
        END {print n + 0}' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
    [[ -n $rps ]] || die "could not read Requests/sec from wrk for $name"
    # Bytes on the wire per answer: status line and headers plus body.
    resp_bytes=$(curl -s -i --max-time 2 "$url" | wc -c)
    ROWS+=("$name|$rps|$p50|$p99|$avg|$((${socket_errors:-0} + ${non2xx:-0}))|$resp_bytes|$other%")
}

HOST_INFO=$(describe_host)

# ---------------------------------------------------------------------------------------------
# 1. taskgate, warmed: once as shipped (access log on, RUST_LOG=info, lines to a file) and once
#    with the access log off. TASKGATE_DRAIN_DELAY=0s only makes the stop quick.

# bench_taskgate ROW-NAME [VAR=VALUE...]: start, warm /tasks/42 to a cached final answer, measure.
# BIN (default TASKGATE_BIN) picks the binary.
bench_taskgate() {
    local name=$1 port url warmed=0 i
    local TASKGATE_BIN=${BIN:-$TASKGATE_BIN}
    shift
    port=$(free_port)
    url="http://127.0.0.1:$port/tasks/$FLOW_ID"
    log "$name: starting taskgate on 127.0.0.1:$port (core $SERVER_CORE, 1 worker, demo) $*"
    env TASKGATE_DRAIN_DELAY=0s TASKGATE_SHUTDOWN_TIMEOUT=2s "$@" \
        taskset -c "$SERVER_CORE" "$TASKGATE_BIN" --demo --workers 1 --listen "127.0.0.1:$port" \
        >"$WORK/taskgate.log" 2>&1 &
    PIDS+=("$!")
    wait_http "$!" "http://127.0.0.1:$port/healthz" || {
        cat "$WORK/taskgate.log" >&2
        die "taskgate did not start"
    }
    # Poll until the demo task is final. Processing answers are cached for 1 s and task 42 is
    # processing for 2 + 42 % 3 = 2 upstream polls, so this takes a little over 2 s.
    for ((i = 0; i < 60; i++)); do
        if curl -s --max-time 5 "$url" | grep -q '"status":"succeeded"'; then
            warmed=1
            break
        fi
        sleep 0.25
    done
    ((warmed == 1)) || die "/tasks/$FLOW_ID never became succeeded"
    if [[ ! -s $WORK/body.json ]]; then
        curl -s --max-time 2 -o "$WORK/body.json" "$url"
        log "warmed: $(cat "$WORK/body.json") ($(wc -c <"$WORK/body.json") bytes)"
    fi
    grep -qi '^x-cache: hit' <(curl -s -D - -o /dev/null --max-time 2 "$url") ||
        die "taskgate does not answer /tasks/$FLOW_ID from its cache"
    run_wrk "$name" "$url" "${PIDS[-1]}"
    stop_last
    rm -f "$WORK/taskgate.log"
}

bench_taskgate "taskgate" RUST_LOG=info
bench_taskgate "taskgate, access log off" RUST_LOG=warn TASKGATE_ACCESS_LOG=false
if [[ -n ${BASELINE_BIN:-} ]]; then
    [[ -x $BASELINE_BIN ]] || die "BASELINE_BIN $BASELINE_BIN is not an executable"
    BIN=$BASELINE_BIN bench_taskgate "baseline taskgate" RUST_LOG=info
    BIN=$BASELINE_BIN bench_taskgate "baseline taskgate, access log off" RUST_LOG=warn \
        TASKGATE_ACCESS_LOG=false
fi

# ---------------------------------------------------------------------------------------------
# 2. nginx proxy_cache HIT of the same bytes: once with access_log off, once logging every
#    request as taskgate does (buffered, as a tuned production nginx would).
bench_nginx() {
local label=$1 access_log=$2
NGX_PORT=$(free_port)
ORIGIN_PORT=$(free_port)
NGX="$WORK/nginx-$NGX_PORT"
access_log=${access_log//@LOGS@/$NGX/logs}
mkdir -p "$NGX/www/tasks" "$NGX/cache" "$NGX/tmp" "$NGX/logs"
cp "$WORK/body.json" "$NGX/www/tasks/$FLOW_ID"
cat >"$NGX/nginx.conf" <<EOF
# Generated by bench/cache_hit.sh.
daemon off;
master_process on;
user root;
worker_processes 1;
worker_cpu_affinity 1;
pid $NGX/nginx.pid;
error_log $NGX/logs/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log $access_log;
    client_body_temp_path $NGX/tmp/body;
    proxy_temp_path $NGX/tmp/proxy;
    fastcgi_temp_path $NGX/tmp/fastcgi;
    uwsgi_temp_path $NGX/tmp/uwsgi;
    scgi_temp_path $NGX/tmp/scgi;

    sendfile off;
    open_file_cache max=1000 inactive=60s;
    open_file_cache_valid 60s;
    open_file_cache_min_uses 1;
    open_file_cache_errors on;
    # nginx closes a keep-alive connection after 1000 requests by default; actix does not.
    keepalive_requests 1000000;
    keepalive_timeout 75s;

    proxy_cache_path $NGX/cache levels=1:2 keys_zone=tasks:1m max_size=16m inactive=24h use_temp_path=off;

    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 4;
    }

    # The tiny upstream: the same bytes, with taskgate's Cache-Control for a final answer.
    server {
        listen 127.0.0.1:$ORIGIN_PORT;
        location /tasks/ {
            root $NGX/www;
            default_type application/json;
            add_header Cache-Control "public, max-age=86400, immutable";
        }
    }

    server {
        listen 127.0.0.1:$NGX_PORT;
        location /tasks/ {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache tasks;
            proxy_cache_valid 200 24h;
            proxy_cache_lock on;
            proxy_hide_header ETag;
            proxy_hide_header Last-Modified;
            add_header X-Cache-Status \$upstream_cache_status always;
        }
    }
}
EOF
NGX_URL="http://127.0.0.1:$NGX_PORT/tasks/$FLOW_ID"
log "starting nginx on 127.0.0.1:$NGX_PORT (core $SERVER_CORE, 1 worker, origin :$ORIGIN_PORT)"
taskset -c "$SERVER_CORE" "$NGINX_BIN" -p "$NGX/" -c "$NGX/nginx.conf" -e "$NGX/logs/error.log" \
    >"$NGX/logs/stdout.log" 2>&1 &
PIDS+=("$!")
wait_http "$!" "http://127.0.0.1:$ORIGIN_PORT/tasks/$FLOW_ID" || {
    cat "$NGX/logs/error.log" >&2
    die "nginx did not start"
}
# First request fills the cache (MISS), the next ones must be HITs of identical bytes.
curl -s -o /dev/null --max-time 2 "$NGX_URL"
status=""
for ((i = 0; i < 20; i++)); do
    status=$(curl -s -D - -o "$WORK/nginx-body.json" --max-time 2 "$NGX_URL" |
        awk -F': ' 'tolower($1) == "x-cache-status" {gsub(/\r/, "", $2); print $2}')
    [[ $status == HIT ]] && break
    sleep 0.1
done
[[ $status == HIT ]] || die "nginx proxy_cache did not HIT (X-Cache-Status: ${status:-none})"
cmp -s "$WORK/body.json" "$WORK/nginx-body.json" || die "nginx serves different bytes"
log "nginx: X-Cache-Status: HIT with identical body"
run_wrk "$label" "$NGX_URL" "${PIDS[-1]}"
stop_last
}
bench_nginx "nginx proxy_cache HIT" "off"
bench_nginx "nginx proxy_cache HIT, access log on" "@LOGS@/access.log combined buffer=64k flush=1s"

# ---------------------------------------------------------------------------------------------
# 3. bare actix-web handler returning the same bytes.
BARE_PORT=$(free_port)
BARE_URL="http://127.0.0.1:$BARE_PORT/tasks/$FLOW_ID"
log "starting bare-actix on 127.0.0.1:$BARE_PORT (core $SERVER_CORE, 1 worker)"
taskset -c "$SERVER_CORE" "$BARE_BIN" "127.0.0.1:$BARE_PORT" "$WORK/body.json" \
    >"$WORK/bare.log" 2>&1 &
PIDS+=("$!")
wait_http "$!" "$BARE_URL" || {
    cat "$WORK/bare.log" >&2
    die "bare-actix did not start"
}
curl -s -o "$WORK/bare-body.json" --max-time 2 "$BARE_URL"
cmp -s "$WORK/body.json" "$WORK/bare-body.json" || die "bare-actix serves different bytes"
run_wrk "bare actix-web" "$BARE_URL" "${PIDS[-1]}"
stop_last

# ---------------------------------------------------------------------------------------------
# Report.
for row in "${ROWS[@]}"; do
    IFS='|' read -r name rps _ <<<"$row"
    if [[ $name == "bare actix-web" ]]; then
        BARE_RPS=$rps
    fi
done

nginx_version=$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')
wrk_version=$("$WRK_BIN" --version 2>&1 | head -n1 | awk '{print $2}' || true)

{
    echo "# taskgate cache-hit benchmark"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host: $HOST_INFO"
    echo "- $(describe_build), \`--demo --workers 1\`, GET /tasks/$FLOW_ID (final answer, cached);" \
        "first row as shipped (access log on, RUST_LOG=info, written to a file), second with" \
        "TASKGATE_ACCESS_LOG=false RUST_LOG=warn"
    if [[ -n ${BASELINE_BIN:-} ]]; then
        echo "- baseline taskgate rows: $BASELINE_BIN, built $(date -u -r "$BASELINE_BIN" '+%Y-%m-%d %H:%M UTC')"
    fi
    echo "- baselines: $nginx_version proxy_cache HIT (1 worker, open_file_cache, sendfile off);" \
        "bare actix-web 4 handler (1 worker) returning the same $(wc -c <"$WORK/body.json")-byte body"
    echo "- servers pinned to core $SERVER_CORE, load \`taskset -c $LOAD_CORE wrk $wrk_version" \
        "-t1 -c$CONNECTIONS -d${DURATION_SECS}s --latency\` after a ${WARMUP_SECS}s warm-up; loopback only"
    echo "- bytes/answer: status line, headers and body of one answer; errors: wrk socket errors" \
        "plus non-2xx answers; other CPU: user CPU of processes other than the server and wrk" \
        "during the measured run, in % of one core (about 10% on an idle machine; well above that, rerun)"
    echo
    echo "| server | requests/s | p50 | p99 | avg | errors | bytes/answer | vs bare actix | other CPU |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r name rps p50 p99 avg errors bytes other <<<"$row"
        ratio=$(awk -v a="$rps" -v b="${BARE_RPS:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
        echo "| $name | $rps | $p50 | $p99 | $avg | $errors | $bytes | $ratio | $other |"
    done
} >"$WORK/report.md"

publish_report "$WORK/report.md" "$RESULT_FILE"

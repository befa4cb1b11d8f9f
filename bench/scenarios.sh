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
#
# Usage: bench/scenarios.sh              (SKIP_BUILD=1 reuses target/release/taskgate)
#        SCENARIOS="herd storm" bench/scenarios.sh
# Writes bench/results/scenarios.md and prints it. Exits 1 if an expectation failed.

set -euo pipefail

LOG_TAG=scenarios
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RESULT_FILE="$RESULTS_DIR/scenarios.md"
SCENARIOS=${SCENARIOS:-herd storm saturation throttled}
FAKE="$BENCH_DIR/fake_upstream.py"
DRIVE="$BENCH_DIR/drive.py"

command -v python3 >/dev/null || die "python3 (3.11+) is missing"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 must be 3.11 or newer"
command -v curl >/dev/null || die "curl is missing"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/taskgate-scenarios.XXXXXX")
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ $SKIP_BUILD != 1 ]]; then
    build_release "$REPO_DIR/Cargo.toml"
fi
[[ -x $TASKGATE_BIN ]] || die "$TASKGATE_BIN is missing (run without SKIP_BUILD=1)"

HOST_INFO=$(describe_host)
RESULTS_JSONL="$WORK/results.jsonl"
: >"$RESULTS_JSONL"

# scenario NAME "FAKE FLAGS" "TASKGATE FLAGS" DRIVE-ARGS...
# Fake flags and taskgate flags are space-separated words (no quoting inside).
scenario() {
    local name=$1 fake_flags=$2 tg_flags=$3
    shift 3
    local fake_port tg_port port_file="$WORK/$name.fake-port"
    local -a fake_args tg_args
    read -r -a fake_args <<<"$fake_flags"
    read -r -a tg_args <<<"$tg_flags"

    log "$name: fake upstream ${fake_flags:-(defaults)}"
    python3 "$FAKE" --port 0 --port-file "$port_file" --max-seconds 300 "${fake_args[@]}" \
        >"$WORK/$name.fake.log" 2>&1 &
    PIDS+=("$!")
    for ((i = 0; i < 100; i++)); do
        [[ -s $port_file ]] && break
        kill -0 "${PIDS[-1]}" 2>/dev/null || break
        sleep 0.05
    done
    [[ -s $port_file ]] || {
        cat "$WORK/$name.fake.log" >&2
        die "$name: the fake upstream did not start"
    }
    fake_port=$(<"$port_file")

    tg_port=$(free_port)
    log "$name: taskgate on 127.0.0.1:$tg_port ${tg_flags}"
    RUST_LOG=${RUST_LOG:-error} "$TASKGATE_BIN" --listen "127.0.0.1:$tg_port" \
        --upstream-endpoint "http://127.0.0.1:$fake_port" \
        --secret-id AKIDbenchFAKE --secret-key benchFAKEkey "${tg_args[@]}" \
        >"$WORK/$name.taskgate.log" 2>&1 &
    PIDS+=("$!")
    wait_http "$!" "http://127.0.0.1:$tg_port/healthz" || {
        cat "$WORK/$name.taskgate.log" >&2
        die "$name: taskgate did not start"
    }

    local setup="fake: ${fake_flags:-defaults}"
    [[ -n $tg_flags ]] && setup="$setup; taskgate: $tg_flags"
    # Bounded: drive.py caps every request (30 s) and the scenario as a whole.
    timeout 120 python3 "$DRIVE" "$@" --name "$name" --setup "$setup" \
        --target "127.0.0.1:$tg_port" --stats "127.0.0.1:$fake_port" >>"$RESULTS_JSONL" ||
        die "$name: the driver failed"
    tail -n1 "$RESULTS_JSONL" >&2

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
        *) die "unknown scenario '$name' (herd, storm, saturation, throttled)" ;;
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

mkdir -p "$RESULTS_DIR"
cp "$WORK/report.md" "$RESULT_FILE"
echo
cat "$RESULT_FILE"
log "written to $RESULT_FILE"
if grep -q '"verdict": "FAIL"' "$RESULTS_JSONL"; then
    log "some expectations failed"
    exit 1
fi

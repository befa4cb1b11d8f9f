#!/usr/bin/env python3
"""A counting fake of Tencent SSM DescribeAsyncRequestInfo for the benchmarks (stdlib only).

POST /         body {"FlowID": n}; answers HTTP 200 with
               {"Response":{"TaskStatus":S,"Description":"...","RequestId":"..."}}
               or, for every Nth call with --throttle-every N,
               {"Response":{"Error":{"Code":"RequestLimitExceeded","Message":"..."},"RequestId":"..."}}
               Faults, counted on the call number (1, 2, 3, ... since start), first match wins:
                 --close-every N     close the connection without answering
                 --fail-every N      HTTP 500 with a plain-text body
                 --throttle-every N  RequestLimitExceeded (HTTP 200)
               Timing: every answer (and close) waits --delay-ms first; every Nth call with
               --slow-every N waits --slow-ms more.
               --enforce-limit R: Tencent's own limit, judged on arrival: a call that is the
               (R+1)th or later to arrive within one second (it and the calls before it less
               than 1 s apart; refused calls count too) answers RequestLimitExceeded at once,
               before the faults above (counted as outcome "limit_exceeded").
               --finish-after-s S: a flow id answers TaskStatus 0 (processing) until S seconds
               after its FIRST call, then --status; --finish-jitter-s J adds 0..J s more, fixed
               per flow id (so tasks do not all finish in step with a 1 s poll). --processing-ids
               IDS answers 0 for those ids always.
POST /control  JSON body with any of delay_ms, status, throttle_every, fail_every, close_every,
               slow_every, slow_ms, finish_after_s, finish_jitter_s, processing_ids ("1,2,5-9"),
               enforce_limit,
               phase (a label
               every later call is counted under); changes them at run time, answers the settings.
GET /stats     {"calls": total, "max_in_any_1s_window": m, "calls_per_flow_id": {"n": count},
                "throttled": t, "span_s": first to last call, "outcomes": {kind: count},
                "slowed": s, "first_call_monotonic": {"n": t}, "finish_after_s": S,
                "finish_at_monotonic": {"n": when n answers final (with --finish-after-s)},
                "final_answered_monotonic": {"n": when the first final answer for n was sent},
                "limit_exceeded": calls refused by --enforce-limit,
                "phases": {label: {"calls", "max_in_any_1s_window", "outcomes", "slowed"}},
                "since_call": K}
               Outcome kinds: processing, succeeded, failed (answered), throttled, http_500,
               closed, limit_exceeded. GET /stats?since_call=K counts only calls K+1 onwards (K: an
               earlier "calls"), so one fake can serve several measured steps. With &calls=1 it
               also lists every call: "call_list": [[arrival_monotonic, flow id, outcome], ...]. The *_monotonic times are
               time.monotonic() of this process (CLOCK_MONOTONIC, the same clock for every
               process on the machine).

It does NOT verify TC3 signatures, timestamps or headers: it exists to count calls and shape
answers under load. The Rust test suite (tests/api/fake_upstream.rs) has the fake that verifies
signatures. Listen on loopback only.

Usage: fake_upstream.py --port 0 --port-file FILE [--delay-ms 1000] [--status 0|1|2]
                        [--throttle-every N] [--fail-every N] [--close-every N]
                        [--slow-every N --slow-ms M] [--finish-after-s S [--finish-jitter-s J]]
                        [--processing-ids IDS] [--phase LABEL] [--enforce-limit R]
"""

import argparse
import json
import os
import random
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DESCRIPTIONS = {0: "task is processing", 1: "task succeeded", 2: "task failed"}
STATUS_KIND = {0: "processing", 1: "succeeded", 2: "failed"}
# Settings POST /control may change, with their types.
CONTROLLABLE = {
    "delay_ms": int,
    "status": int,
    "throttle_every": int,
    "fail_every": int,
    "close_every": int,
    "slow_every": int,
    "slow_ms": int,
    "finish_after_s": float,
    "finish_jitter_s": float,
    "processing_ids": str,
    "phase": str,
    "enforce_limit": int,
}
MAX_FLOW_IDS = 100_000  # bound on the per-flow-id maps: a long soak must not grow them forever


def id_set(text: str) -> frozenset[int]:
    """"", "7", "1,2,3" or "3001-3100"."""
    ids: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, sep, last = part.partition("-")
        if sep and int(last) - int(first) > MAX_FLOW_IDS:
            raise ValueError(f"range {part} is too large")
        ids.update(range(int(first), int(last) + 1) if sep else [int(first)])
    return frozenset(ids)


def finish_offset(flow_id: str, settings: dict) -> float:
    """Seconds after its first call at which a flow id answers final: S plus its fixed jitter."""
    jitter = settings["finish_jitter_s"]
    if jitter <= 0:
        return settings["finish_after_s"]
    return settings["finish_after_s"] + jitter * random.Random(int(flow_id)).random()


def max_in_window(times: list[float]) -> int:
    """Largest number of arrivals in any half-open window [t, t + 1 s): two pointers."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


class Settings:
    """The answer-shaping settings; read under the lock, changed by POST /control."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.lock = threading.Lock()
        self.values = {
            "delay_ms": opts.delay_ms,
            "status": opts.status,
            "throttle_every": opts.throttle_every,
            "fail_every": opts.fail_every,
            "close_every": opts.close_every,
            "slow_every": opts.slow_every,
            "slow_ms": opts.slow_ms,
            "finish_after_s": opts.finish_after_s,
            "finish_jitter_s": opts.finish_jitter_s,
            "processing_ids": opts.processing_ids,
            "phase": opts.phase,
            "enforce_limit": opts.enforce_limit,
        }
        self.processing = id_set(opts.processing_ids)

    def snapshot(self) -> tuple[dict, frozenset[int]]:
        with self.lock:
            return dict(self.values), self.processing

    def update(self, changes: dict) -> dict:
        """Validates every change first, then applies them all; raises ValueError."""
        clean = {}
        for key, value in changes.items():
            kind = CONTROLLABLE.get(key)
            if kind is None:
                raise ValueError(f"unknown setting {key!r}")
            if kind is str:
                if not isinstance(value, str) or len(value) > 200:
                    raise ValueError(f"{key} must be a string (at most 200 characters)")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{key} must be a number")
            elif value < 0:
                raise ValueError(f"{key} must not be negative")
            clean[key] = kind(value)
        if clean.get("status", 1) not in STATUS_KIND:
            raise ValueError("status must be 0, 1 or 2")
        processing = id_set(clean["processing_ids"]) if "processing_ids" in clean else None
        with self.lock:
            self.values.update(clean)
            if processing is not None:
                self.processing = processing
            return dict(self.values)


class Calls:
    """One record per call (arrival, flow id, phase, outcome), shared by the handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: list[float] = []
        self.flow_ids: list[str] = []
        self.phases: list[str] = []
        self.outcomes: list[str] = []
        self.slowed: list[bool] = []
        self.first_call: dict[str, float] = {}
        self.first_final: dict[str, float] = {}
        self.recent: deque[float] = deque()  # arrivals less than 1 s old, for --enforce-limit

    def record(self, flow_id: str, phase: str) -> tuple[int, float, float, int]:
        """Counts one call on arrival: returns its number (from 1), now, its flow id's first call
        and how many calls (this one included) arrived less than 1 s before and up to now."""
        now = time.monotonic()
        with self.lock:
            recent = self.recent
            while recent and now - recent[0] >= 1.0:
                recent.popleft()
            recent.append(now)
            self.arrivals.append(now)
            self.flow_ids.append(flow_id)
            self.phases.append(phase)
            self.outcomes.append("pending")
            self.slowed.append(False)
            if flow_id not in self.first_call and len(self.first_call) < MAX_FLOW_IDS:
                self.first_call[flow_id] = now
            return len(self.arrivals), now, self.first_call.get(flow_id, now), len(recent)

    def settle(self, number: int, outcome: str, slowed: bool) -> None:
        with self.lock:
            self.outcomes[number - 1] = outcome
            self.slowed[number - 1] = slowed
            if outcome in ("succeeded", "failed"):
                flow_id = self.flow_ids[number - 1]
                if flow_id not in self.first_final and len(self.first_final) < MAX_FLOW_IDS:
                    self.first_final[flow_id] = time.monotonic()

    def stats(self, since_call: int, settings: dict, with_calls: bool = False) -> dict:
        with self.lock:
            since_call = max(0, min(since_call, len(self.arrivals)))
            times = self.arrivals[since_call:]
            flow_ids = self.flow_ids[since_call:]
            phases = self.phases[since_call:]
            outcomes = self.outcomes[since_call:]
            slowed = self.slowed[since_call:]
            first_call = {f: self.first_call[f] for f in set(flow_ids) if f in self.first_call}
            first_final = {f: self.first_final[f] for f in first_call if f in self.first_final}
        per_flow_id: dict[str, int] = {}
        for flow_id in flow_ids:
            per_flow_id[flow_id] = per_flow_id.get(flow_id, 0) + 1
        by_phase: dict[str, dict] = {}
        phase_times: dict[str, list[float]] = {}
        for t, phase, outcome, slow in zip(times, phases, outcomes, slowed):
            entry = by_phase.setdefault(phase, {"calls": 0, "outcomes": {}, "slowed": 0})
            entry["calls"] += 1
            entry["outcomes"][outcome] = entry["outcomes"].get(outcome, 0) + 1
            entry["slowed"] += slow
            phase_times.setdefault(phase, []).append(t)
        for phase, entry in by_phase.items():
            entry["max_in_any_1s_window"] = max_in_window(sorted(phase_times[phase]))
        all_outcomes: dict[str, int] = {}
        for outcome in outcomes:
            all_outcomes[outcome] = all_outcomes.get(outcome, 0) + 1
        ordered = sorted(times)
        extra = {"call_list": [[t, f, o] for t, f, o in zip(times, flow_ids, outcomes)]} \
            if with_calls else {}
        return {
            "calls": len(times),
            "max_in_any_1s_window": max_in_window(ordered),
            "calls_per_flow_id": per_flow_id,
            "throttled": all_outcomes.get("throttled", 0),
            "span_s": round(ordered[-1] - ordered[0], 3) if ordered else 0.0,
            "outcomes": all_outcomes,
            "slowed": sum(slowed),
            "first_call_monotonic": first_call,
            "finish_after_s": settings["finish_after_s"],
            "finish_at_monotonic": {
                f: t + finish_offset(f, settings) for f, t in first_call.items()
            } if settings["finish_after_s"] > 0 or settings["finish_jitter_s"] > 0 else {},
            "final_answered_monotonic": first_final,
            "limit_exceeded": all_outcomes.get("limit_exceeded", 0),
            "enforce_limit": settings["enforce_limit"],
            "phases": by_phase,
            "since_call": since_call,
            **extra,
        }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as taskgate's client pools connections
    server_version = "fake-ssm"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - quiet: one line per call is noise
        pass

    def _send(self, body: bytes, status: int, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The caller gave up first (taskgate's upstream timeout): expected in slow phases.
            self.close_connection = True

    def _send_json(self, payload: dict, status: int = 200) -> None:
        self._send(json.dumps(payload, separators=(",", ":")).encode(), status, "application/json")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(length, 1 << 20)) if length > 0 else b""

    def do_GET(self):  # noqa: N802 - http.server naming
        url = urlsplit(self.path)
        if url.path == "/stats":
            query = parse_qs(url.query)
            try:
                since_call = int(query.get("since_call", ["0"])[0])
            except ValueError:
                self._send_json({"error": "since_call must be an integer"}, 400)
                return
            with_calls = query.get("calls", ["0"])[0] == "1"
            values, _ = self.server.settings.snapshot()
            self._send_json(self.server.calls.stats(since_call, values, with_calls))
        else:
            self._send_json({"error": "not found"}, 404)

    def do_POST(self):  # noqa: N802 - http.server naming
        raw = self._body()
        if self.path == "/control":
            try:
                changes = json.loads(raw or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("the body must be a JSON object")
                self._send_json(self.server.settings.update(changes))
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                self._send_json({"error": str(e)}, 400)
            return
        # No signature check here on purpose (see the module docstring).
        try:
            flow_id = str(int(json.loads(raw)["FlowID"]))
        except (ValueError, KeyError, TypeError):
            flow_id = None
        request_id = str(uuid.uuid4())
        if self.path != "/" or flow_id is None:
            error = {"Code": "InvalidParameter", "Message": "FlowID must be an integer"}
            self._send_json({"Response": {"Error": error, "RequestId": request_id}})
            return
        opts, processing_ids = self.server.settings.snapshot()
        number, now, first_call, in_window = self.server.calls.record(flow_id, opts["phase"])
        if 0 < opts["enforce_limit"] < in_window:
            self.server.calls.settle(number, "limit_exceeded", False)
            error = {"Code": "RequestLimitExceeded",
                     "Message": f"fake: more than {opts['enforce_limit']} calls in one second"}
            self._send_json({"Response": {"Error": error, "RequestId": request_id}})
            return

        def every(key: str) -> bool:
            return opts[key] > 0 and number % opts[key] == 0

        slowed = every("slow_every")
        delay_ms = opts["delay_ms"] + (opts["slow_ms"] if slowed else 0)
        if delay_ms > 0:
            time.sleep(delay_ms / 1000.0)
        if every("close_every"):
            self.server.calls.settle(number, "closed", slowed)
            self.close_connection = True  # the handler returns without a word; the socket closes
            return
        if every("fail_every"):
            self.server.calls.settle(number, "http_500", slowed)
            self._send(b"fake: every Nth call fails\n", 500, "text/plain")
            return
        if every("throttle_every"):
            self.server.calls.settle(number, "throttled", slowed)
            error = {"Code": "RequestLimitExceeded", "Message": "fake: every Nth call is throttled"}
            self._send_json({"Response": {"Error": error, "RequestId": request_id}})
            return
        status = opts["status"]
        if int(flow_id) in processing_ids or now < first_call + finish_offset(flow_id, opts):
            status = 0
        self.server.calls.settle(number, STATUS_KIND[status], slowed)
        self._send_json(
            {
                "Response": {
                    "TaskStatus": status,
                    "Description": DESCRIPTIONS[status],
                    "RequestId": request_id,
                }
            }
        )


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 drops bursts of new connections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--delay-ms", type=int, default=0, help="delay before every answer")
    parser.add_argument("--status", type=int, choices=(0, 1, 2), default=1,
                        help="TaskStatus to answer: 0 processing, 1 succeeded, 2 failed")
    parser.add_argument("--throttle-every", type=int, default=0, metavar="N",
                        help="answer RequestLimitExceeded to every Nth call (0: never)")
    parser.add_argument("--fail-every", type=int, default=0, metavar="N",
                        help="answer HTTP 500 to every Nth call (0: never)")
    parser.add_argument("--close-every", type=int, default=0, metavar="N",
                        help="close the connection without answering every Nth call (0: never)")
    parser.add_argument("--slow-every", type=int, default=0, metavar="N",
                        help="delay every Nth call by --slow-ms more (0: never)")
    parser.add_argument("--slow-ms", type=int, default=0, metavar="M",
                        help="extra delay of the calls picked by --slow-every")
    parser.add_argument("--finish-after-s", type=float, default=0.0, metavar="S",
                        help="answer processing until S seconds after a flow id's first call")
    parser.add_argument("--finish-jitter-s", type=float, default=0.0, metavar="J",
                        help="add 0..J s to --finish-after-s, fixed per flow id")
    parser.add_argument("--processing-ids", default="", metavar="IDS",
                        help="flow ids always answered processing: 7, 1,2,3 or 10-20")
    parser.add_argument("--phase", default="start", help="label of the calls until changed")
    parser.add_argument("--enforce-limit", type=int, default=0, metavar="R",
                        help="answer RequestLimitExceeded to a call arriving when R calls already "
                             "arrived in the last 1 s (0: never)")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="stop by itself after this long (a bound if the script dies)")
    opts = parser.parse_args()
    if not opts.host.startswith("127.") and opts.host not in ("localhost", "::1"):
        parser.error("--host must be a loopback address")
    for name in ("delay_ms", "throttle_every", "fail_every", "close_every", "slow_every",
                 "slow_ms", "finish_after_s", "finish_jitter_s", "enforce_limit"):
        if getattr(opts, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    try:
        id_set(opts.processing_ids)
    except ValueError as e:
        parser.error(f"--processing-ids: {e}")

    server = Server((opts.host, opts.port), Handler)
    server.settings = Settings(opts)
    server.calls = Calls()
    port = server.server_address[1]
    if opts.port_file:
        with open(opts.port_file + ".tmp", "w") as f:
            f.write(f"{port}\n")
        # Rename so a reader never sees a half-written file.
        os.replace(opts.port_file + ".tmp", opts.port_file)
    timer = threading.Timer(opts.max_seconds, server.shutdown)
    timer.daemon = True
    timer.start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A counting fake of Tencent SSM DescribeAsyncRequestInfo for bench/scenarios.sh (stdlib only).

POST /      body {"FlowID": n}; answers HTTP 200 with
            {"Response":{"TaskStatus":S,"Description":"...","RequestId":"..."}}
            or, for every Nth call with --throttle-every N,
            {"Response":{"Error":{"Code":"RequestLimitExceeded","Message":"..."},"RequestId":"..."}}
GET /stats  {"calls": total, "max_in_any_1s_window": m, "calls_per_flow_id": {"n": count, ...},
             "throttled": t, "span_s": seconds from first to last call}

It does NOT verify TC3 signatures, timestamps or headers: it exists to count calls and shape
answers under load. The Rust test suite (tests/api/fake_upstream.rs) has the fake that verifies
signatures. Listen on loopback only.

Usage: fake_upstream.py --port 0 --port-file FILE [--delay-ms 1000] [--status 0|1|2]
                        [--throttle-every N]
"""

import argparse
import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DESCRIPTIONS = {0: "task is processing", 1: "task succeeded", 2: "task failed"}


class Calls:
    """Arrival times and per-flow-id counts, shared by the handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: list[float] = []
        self.per_flow_id: dict[str, int] = {}
        self.throttled = 0

    def record(self, flow_id: str, throttle_every: int) -> bool:
        """Counts one call on arrival; returns whether this call is to be throttled."""
        with self.lock:
            self.arrivals.append(time.monotonic())
            self.per_flow_id[flow_id] = self.per_flow_id.get(flow_id, 0) + 1
            throttle = throttle_every > 0 and len(self.arrivals) % throttle_every == 0
            if throttle:
                self.throttled += 1
            return throttle

    def stats(self) -> dict:
        with self.lock:
            times = sorted(self.arrivals)
            per_flow_id = dict(self.per_flow_id)
            throttled = self.throttled
        # Largest number of arrivals in any half-open window [t, t + 1 s): two pointers.
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= 1.0:
                start += 1
            best = max(best, end - start + 1)
        return {
            "calls": len(times),
            "max_in_any_1s_window": best,
            "calls_per_flow_id": per_flow_id,
            "throttled": throttled,
            "span_s": round(times[-1] - times[0], 3) if times else 0.0,
        }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as taskgate's client pools connections
    server_version = "fake-ssm"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - quiet: one line per call is noise
        pass

    def _send_json(self, payload: dict, status: int = 200) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server naming
        if self.path == "/stats":
            self._send_json(self.server.calls.stats())
        else:
            self._send_json({"error": "not found"}, 404)

    def do_POST(self):  # noqa: N802 - http.server naming
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
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
        opts = self.server.opts
        throttle = self.server.calls.record(flow_id, opts.throttle_every)
        if opts.delay_ms > 0:
            time.sleep(opts.delay_ms / 1000.0)
        if throttle:
            error = {"Code": "RequestLimitExceeded", "Message": "fake: every Nth call is throttled"}
            self._send_json({"Response": {"Error": error, "RequestId": request_id}})
            return
        self._send_json(
            {
                "Response": {
                    "TaskStatus": opts.status,
                    "Description": DESCRIPTIONS[opts.status],
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
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="stop by itself after this long (a bound if the script dies)")
    opts = parser.parse_args()
    if not opts.host.startswith("127.") and opts.host not in ("localhost", "::1"):
        parser.error("--host must be a loopback address")

    server = Server((opts.host, opts.port), Handler)
    server.opts = opts
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

#!/usr/bin/env python3
"""Load driver for bench/scenarios.sh (stdlib only: asyncio streams, plain HTTP/1.1).

  drive.py burst  --target 127.0.0.1:PORT --stats 127.0.0.1:PORT --flow-ids 7 --callers 500 ...
      every caller opens its own connection; once all are open, each sends one GET /tasks/{id}
      at the same moment; with several flow ids, caller i asks for flow_ids[i % len(flow_ids)].
  drive.py poll   --target ... --stats ... --flow-ids 7 --callers 50 --seconds 5 ...
      every caller polls GET /tasks/{id} on one keep-alive connection, back to back, for the
      given time (and at most --max-requests each).
  drive.py chase  --target ... --stats ... --flow-ids 1-100 --callers 100 --style interval|wait
      every caller wants one task's final status (caller i: flow_ids[i % len(flow_ids)]) and asks
      until the answer is not processing: --style interval sends GET, sleeps --interval (1 s)
      and repeats; --style wait sends GET ?wait=WAIT (30s) and repeats at once. After an answer
      other than 200 both sleep --interval. Bounded by --seconds and --max-requests.
      Reports round trips and how long after the task finished (the fake's finish_at_monotonic:
      its first upstream call plus --finish-after-s and jitter) each caller learned it.
  drive.py report FILE.jsonl
      prints the Markdown tables of the results collected in FILE.jsonl.

--target may name several taskgates (HOST:PORT ...): caller i uses target (i + --target-offset)
modulo their number, so a second run with another offset asks each task through another replica.

Each run reads the fake upstream's GET /stats before and after, counts only the calls made in
between, checks the expectations given (--expect-calls MIN MAX, --expect-max-window N,
--expect-wall MIN MAX, --expect-all-200, --expect-all-final) and prints one JSON line. Every
request has a timeout and every loop is bounded in count and time. Only loopback targets are
accepted.
"""

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter

HEADER_LIMIT = 64 * 1024


def loopback(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    if not (host.startswith("127.") or host == "localhost"):
        raise argparse.ArgumentTypeError(f"{hostport}: only loopback targets are allowed")
    return host, int(port)


def flow_ids(text: str) -> list[int]:
    """"7", "1,2,3" or "3001-3100"."""
    ids: list[int] = []
    for part in text.split(","):
        first, sep, last = part.partition("-")
        ids.extend(range(int(first), int(last) + 1) if sep else [int(first)])
    return ids


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > HEADER_LIMIT:
        raise ValueError("response head too large")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return status, headers, body


def request(host: str, port: int, path: str, keep_alive: bool) -> bytes:
    connection = "keep-alive" if keep_alive else "close"
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: {connection}\r\n\r\n".encode()


class Tally:
    def __init__(self) -> None:
        self.status: Counter[str] = Counter()
        self.cache: Counter[str] = Counter()
        self.first_start: float | None = None
        self.last_end: float = 0.0

    def start(self) -> None:
        now = time.monotonic()
        if self.first_start is None or now < self.first_start:
            self.first_start = now

    def answer(self, status: str, x_cache: str | None) -> None:
        self.status[status] += 1
        if x_cache:
            self.cache[x_cache] += 1
        self.last_end = max(self.last_end, time.monotonic())

    def wall(self) -> float:
        return 0.0 if self.first_start is None else max(0.0, self.last_end - self.first_start)


async def one_shot(host, port, path, timeout, tally: Tally, connected, go: asyncio.Event) -> None:
    """Connects, waits until every caller is connected, then sends one GET: a real herd."""
    writer = None
    try:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        finally:
            connected()
        await go.wait()
        tally.start()
        writer.write(request(host, port, path, keep_alive=False))
        await writer.drain()
        status, headers, _ = await asyncio.wait_for(read_response(reader), timeout)
        tally.answer(str(status), headers.get("x-cache"))
    except Exception as e:  # noqa: BLE001 - every failure is counted, by kind
        tally.answer(f"error:{type(e).__name__}", None)
    finally:
        if writer is not None:
            writer.close()


class KeepAlive:
    """One keep-alive connection to taskgate, opened on first use and again after the server
    closes it or a request fails; every GET is counted in the tally, errors by kind."""

    def __init__(self, host: str, port: int, connect_timeout: float) -> None:
        self.host, self.port, self.connect_timeout = host, port, connect_timeout
        self.reader = self.writer = None

    async def get(self, path: str, timeout: float, tally: Tally) -> tuple[int | None, bytes]:
        """GETs `path`; returns (status, body), or (None, b"") when the request failed."""
        tally.start()
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.connect_timeout)
            self.writer.write(request(self.host, self.port, path, keep_alive=True))
            await self.writer.drain()
            status, headers, body = await asyncio.wait_for(read_response(self.reader), timeout)
        except Exception as e:  # noqa: BLE001 - every failure is counted, by kind
            tally.answer(f"error:{type(e).__name__}", None)
            self.close()
            return None, b""
        tally.answer(str(status), headers.get("x-cache"))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def poller(host, port, path, deadline, max_requests, timeout, tally: Tally) -> None:
    connection = KeepAlive(host, port, timeout)
    try:
        for _ in range(max_requests):
            if time.monotonic() >= deadline:
                break
            await connection.get(path, timeout, tally)
    finally:
        connection.close()


async def chaser(host, port, flow_id, opts, deadline, tally: Tally) -> dict:
    """Asks for one task until it is final; returns round trips and when it learned."""
    path = f"/tasks/{flow_id}" + (f"?wait={opts.wait}" if opts.style == "wait" else "")
    timeout = opts.timeout + (to_seconds(opts.wait) if opts.style == "wait" else 0)
    connection = KeepAlive(host, port, opts.timeout)
    trips, learned = 0, None
    try:
        for _ in range(opts.max_requests):
            if time.monotonic() >= deadline:
                break
            trips += 1
            status, body = await connection.get(path, timeout, tally)
            if status == 200 and json.loads(body).get("status") != "processing":
                learned = time.monotonic()
                break
            if opts.style == "interval" or status != 200:
                await asyncio.sleep(max(0.0, min(opts.interval, deadline - time.monotonic())))
    finally:
        connection.close()
    return {"flow_id": flow_id, "trips": trips, "learned": learned}


def to_seconds(text: str) -> float:
    """"30s", "500ms", "1m" -> seconds."""
    for unit, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


async def fetch_stats(host: str, port: int, since_call: int = 0) -> dict:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    try:
        path = f"/stats?since_call={since_call}" if since_call else "/stats"
        writer.write(request(host, port, path, keep_alive=False))
        await writer.drain()
        status, _, body = await asyncio.wait_for(read_response(reader), 5)
        if status != 200:
            raise RuntimeError(f"GET /stats answered {status}")
        return json.loads(body)
    finally:
        writer.close()


def verdict(opts, tally: Tally, stats: dict, learned: int | None = None) -> tuple[str, list[str]]:
    expected, failures = [], []
    if getattr(opts, "expect_all_final", False):
        expected.append("every caller learns the final status")
        if learned != opts.callers:
            failures.append(f"{opts.callers - (learned or 0)} callers never learned it")
    if opts.expect_all_200:
        expected.append("all 200")
        if set(tally.status) != {"200"}:
            failures.append("not all answers were 200")
    if opts.expect_calls:
        low, high = opts.expect_calls
        expected.append(f"calls {low}" if low == high else f"calls {low}-{high}")
        if not low <= stats["calls"] <= high:
            failures.append(f"{stats['calls']} upstream calls")
    if opts.expect_max_window is not None:
        expected.append(f"max/1s <= {opts.expect_max_window}")
        if stats["max_in_any_1s_window"] > opts.expect_max_window:
            failures.append(f"{stats['max_in_any_1s_window']} calls in one second")
    if opts.expect_wall:
        low, high = opts.expect_wall
        expected.append(f"wall {low:g}-{high:g} s")
        if not low <= tally.wall() <= high:
            failures.append(f"wall {tally.wall():.2f} s")
    if not expected:
        return "report only", []
    return ("PASS" if not failures else "FAIL"), expected + (["-- " + "; ".join(failures)] if failures else [])


def target(opts, i: int) -> tuple[str, int]:
    return opts.target[(i + opts.target_offset) % len(opts.target)]


async def run(opts) -> dict:
    ids = opts.flow_ids
    tally = Tally()
    baseline = (await fetch_stats(*opts.stats))["calls"]
    started = time.monotonic()
    chased: list[dict] = []
    if opts.mode == "chase":
        deadline = started + opts.seconds

        async def chase(i: int) -> None:
            chased.append(await chaser(*target(opts, i), ids[i % len(ids)], opts, deadline, tally))

        jobs = [chase(i) for i in range(opts.callers)]
    elif opts.mode == "burst":
        go = asyncio.Event()
        pending = [opts.callers]

        def connected() -> None:
            pending[0] -= 1
            if pending[0] == 0:
                go.set()

        jobs = [
            one_shot(*target(opts, i), f"/tasks/{ids[i % len(ids)]}", opts.timeout, tally,
                     connected, go)
            for i in range(opts.callers)
        ]
    else:
        deadline = started + opts.seconds
        jobs = [
            poller(*target(opts, i), f"/tasks/{ids[i % len(ids)]}", deadline, opts.max_requests,
                   opts.timeout, tally)
            for i in range(opts.callers)
        ]
    # A hard bound on the whole scenario, whatever happens to single requests.
    bound = opts.timeout + (opts.seconds if opts.mode in ("poll", "chase") else 0) + 10
    if opts.mode == "chase" and opts.style == "wait":
        bound += to_seconds(opts.wait)
    try:
        await asyncio.wait_for(asyncio.gather(*jobs), bound)
    except asyncio.TimeoutError:
        tally.status["error:ScenarioTimeout"] += 1
    stats = await fetch_stats(*opts.stats, since_call=baseline)
    if opts.mode == "chase":
        return chase_result(opts, tally, stats, chased)
    result, expected = verdict(opts, tally, stats)
    return {
        **common_fields(opts, tally, stats),
        "throttled_calls": stats.get("throttled", 0),
        "distinct_flow_ids_called": len(stats["calls_per_flow_id"]),
        "expected": expected,
        "verdict": result,
    }


def common_fields(opts, tally: Tally, stats: dict) -> dict:
    """What every scenario row reports: who asked, what they got, what the upstream saw."""
    return {
        "scenario": opts.name,
        "setup": opts.setup,
        "callers": opts.callers,
        "answers": dict(sorted(tally.status.items())),
        "x_cache": dict(sorted(tally.cache.items())),
        "requests": sum(tally.status.values()),
        "wall_s": round(tally.wall(), 2),
        "upstream_calls": stats["calls"],
        "max_calls_in_1s": stats["max_in_any_1s_window"],
    }


def chase_result(opts, tally: Tally, stats: dict, chased: list[dict]) -> dict:
    first_calls = stats.get("first_call_monotonic", {})
    finish_at = stats.get("finish_at_monotonic", {})
    finish_after = float(stats.get("finish_after_s", 0.0))
    lags = []
    for c in chased:
        flow_id = str(c["flow_id"])
        finished = finish_at.get(flow_id)
        if finished is None and flow_id in first_calls:
            finished = first_calls[flow_id] + finish_after
        if c["learned"] is not None and finished is not None:
            lags.append(c["learned"] - finished)
    learned = sum(1 for c in chased if c["learned"] is not None)
    result, expected = verdict(opts, tally, stats, learned)
    return {
        "kind": "chase",
        **common_fields(opts, tally, stats),
        "style": opts.style,
        "learned": learned,
        "lag_median_s": round(statistics.median(lags), 2) if lags else None,
        "lag_max_s": round(max(lags), 2) if lags else None,
        "lag_min_s": round(min(lags), 2) if lags else None,
        "expected": expected,
        "verdict": result,
    }


def fmt_counts(counts: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "-"


def fmt_s(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def chase_report(rows: list[dict]) -> str:
    out = [
        "| scenario | setup | callers | caller round trips | answers by status | wall s "
        "| upstream calls | max calls in any 1 s | learned final | learned after finish: "
        "median / max s | expected | verdict |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        out.append(
            f"| {r['scenario']} | {r['setup']} | {r['callers']} | {r['requests']} "
            f"| {fmt_counts(r['answers'])} | {r['wall_s']:.2f} | {r['upstream_calls']} "
            f"| {r['max_calls_in_1s']} | {r['learned']} of {r['callers']} "
            f"| {fmt_s(r['lag_median_s'])} / {fmt_s(r['lag_max_s'])} "
            f"| {'; '.join(r['expected']) or '-'} | {r['verdict']} |"
        )
    return "\n".join(out)


def report(path: str) -> str:
    every = [json.loads(line) for line in open(path) if line.strip()]
    rows = [r for r in every if r.get("kind") != "chase"]
    chased = [r for r in every if r.get("kind") == "chase"]
    if not rows:
        return chase_report(chased)
    out = [
        "| scenario | setup | callers | requests | answers by status | X-Cache | wall s "
        "| upstream calls | max calls in any 1 s | expected | verdict |",
        "| --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        calls = str(r["upstream_calls"])
        if r.get("throttled_calls"):
            calls += f" ({r['throttled_calls']} throttled)"
        out.append(
            f"| {r['scenario']} | {r['setup']} | {r['callers']} | {r['requests']} "
            f"| {fmt_counts(r['answers'])} | {fmt_counts(r['x_cache'])} | {r['wall_s']:.2f} "
            f"| {calls} | {r['max_calls_in_1s']} | {'; '.join(r['expected']) or '-'} "
            f"| {r['verdict']} |"
        )
    if chased:
        out += ["", chase_report(chased)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("burst", "poll", "chase"):
        p = sub.add_parser(mode)
        p.add_argument("--name", required=True)
        p.add_argument("--setup", default="")
        p.add_argument("--target", type=loopback, nargs="+", required=True,
                       help="taskgate HOST:PORT, one or more")
        p.add_argument("--target-offset", type=int, default=0,
                       help="caller i uses target (i + offset) modulo the number of targets")
        p.add_argument("--stats", type=loopback, required=True, help="fake upstream HOST:PORT")
        p.add_argument("--flow-ids", type=flow_ids, required=True)
        p.add_argument("--callers", type=int, required=True)
        p.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
        p.add_argument("--expect-calls", type=int, nargs=2, metavar=("MIN", "MAX"))
        p.add_argument("--expect-max-window", type=int)
        p.add_argument("--expect-wall", type=float, nargs=2, metavar=("MIN", "MAX"))
        p.add_argument("--expect-all-200", action="store_true")
        if mode in ("poll", "chase"):
            p.add_argument("--seconds", type=float, required=True)
            p.add_argument("--max-requests", type=int, default=100_000, help="per caller")
        if mode == "chase":
            p.add_argument("--style", choices=("interval", "wait"), required=True)
            p.add_argument("--interval", type=float, default=1.0, help="seconds between asks")
            p.add_argument("--wait", default="30s", help="the ?wait= of --style wait")
            p.add_argument("--expect-all-final", action="store_true")
    p = sub.add_parser("report")
    p.add_argument("file")
    opts = parser.parse_args()

    if opts.mode == "report":
        print(report(opts.file))
        return 0
    if not 1 <= opts.callers <= 2000:
        parser.error("--callers must be 1..2000")
    if opts.mode in ("poll", "chase") and not 0 < opts.seconds <= 120:
        parser.error("--seconds must be in (0, 120]")
    result = asyncio.run(run(opts))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

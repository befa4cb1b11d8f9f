#!/usr/bin/env python3
"""Overload driver for bench/overload.sh (issue 11; stdlib only: asyncio streams, plain HTTP/1.1).

  overload.py run --name NAME --mode poll|wait --tasks N --target HOST:PORT [HOST:PORT ...]
                  --stats HOST:PORT [--seconds S] ...
      N tasks, one client each on its own keep-alive connection (client i through target
      i mod len(targets)); all connections are opened first, then every client sends its first
      request at the same moment t0:
        poll: GET /tasks/{id}, and after each 200 `processing` sleep --interval (1 s) and again;
        wait: GET /tasks/{id}?wait=WAIT (30s), and after each 200 `processing` again at once;
      until a 200 with a final status. After a 503 both sleep its Retry-After (1 s if absent),
      after a transport error --interval. At t0 + --new-at (6 s), --new-count (10) NEW flow ids
      are each asked by a new client with a plain GET (a ?wait= would hold until the task ends),
      again after a 503 as above, until their first 200.
      Everything stops at t0 + --seconds; every request has a timeout, every client a cap on
      requests. Then it reads the fake's GET /stats?calls=1 (every call's arrival) and each
      target's /metrics, and prints one JSON line with the measures against the targets of
      issue 11 (R = --rate).
  overload.py report FILE.jsonl [--json OUT.json]
      prints the Markdown tables of the runs in FILE.jsonl (and writes them as one JSON file).
  overload.py summary FILE.jsonl
      prints one line on the last run in FILE.jsonl.

Only loopback targets are accepted.
"""

import argparse
import asyncio
import json
import math
import os
import resource
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from drive import loopback, read_response, request, to_seconds  # noqa: E402 - next to us

CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 35.0  # taskgate's own deadline is 30 s; a long poll adds its wait
MAX_TRIPS = 2000  # per client: a bound even if taskgate answered instantly and wrongly
CONNECT_AT_ONCE = 100  # connections being opened at once before t0


class Conn:
    """One keep-alive connection. A GET on a reused connection that the server had closed
    (idle keep-alive timeout: no byte of an answer) is sent again once on a new one, as HTTP
    clients do for idempotent requests; that is counted as a reconnect, not as an error."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader = self.writer = None
        self.used = False
        self.reconnects = 0

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT)
        self.used = False

    async def get(self, path: str, timeout: float) -> tuple[int, dict[str, str], bytes]:
        for attempt in (0, 1):
            if self.writer is None:
                await self.open()
            reused = self.used
            try:
                self.writer.write(request(self.host, self.port, path, keep_alive=True))
                await self.writer.drain()
                self.used = True
                status, headers, body = await asyncio.wait_for(read_response(self.reader), timeout)
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                self.close()
                silent = not isinstance(e, asyncio.IncompleteReadError) or not e.partial
                if reused and silent and attempt == 0:
                    self.reconnects += 1
                    continue
                raise
            except BaseException:
                self.close()
                raise
            if headers.get("connection", "").lower() == "close":
                self.close()
            return status, headers, body
        raise RuntimeError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Task:
    """One flow id and its one client: every round trip it made, in order."""

    def __init__(self, flow_id: int, new: bool, target: tuple[str, int]) -> None:
        self.flow_id, self.new, self.target = flow_id, new, target
        self.conn = Conn(*target)
        self.asked_at: float | None = None
        # (sent, received, status "200"/"503"/"error:Kind", was ?wait=, final, x-cache, age)
        self.trips: list[tuple] = []
        self.first_200: float | None = None
        self.learned: float | None = None  # when the client received the final answer
        self.cut = False  # a request was still in flight at the end of the run
        self.retry_after: list[float] = []  # Retry-After of every 503 it was answered


def retry_after(headers: dict[str, str]) -> float:
    try:
        return max(0.0, float(int(headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


async def sleep_until_deadline(seconds: float, deadline: float) -> None:
    await asyncio.sleep(max(0.0, min(seconds, deadline - time.monotonic())))


async def client(task: Task, opts, go: asyncio.Event, deadline: float) -> None:
    await go.wait()
    long_poll = opts.mode == "wait" and not task.new
    path = f"/tasks/{task.flow_id}" + (f"?wait={opts.wait}" if long_poll else "")
    timeout = REQUEST_TIMEOUT + (to_seconds(opts.wait) if long_poll else 0.0)
    task.asked_at = time.monotonic()
    try:
        while len(task.trips) < MAX_TRIPS:
            sent = time.monotonic()
            left = deadline - sent
            if left <= 0:
                break
            try:
                status, headers, body = await task.conn.get(path, min(timeout, left))
            except asyncio.TimeoutError:
                if time.monotonic() >= deadline - 0.05:
                    task.cut = True
                    break
                task.trips.append((sent, time.monotonic(), "error:Timeout", long_poll, None, None,
                                   None))
                await sleep_until_deadline(opts.interval, deadline)
                continue
            except Exception as e:  # noqa: BLE001 - counted by kind, then asked again
                task.trips.append((sent, time.monotonic(), f"error:{type(e).__name__}", long_poll,
                                   None, None, None))
                await sleep_until_deadline(opts.interval, deadline)
                continue
            received = time.monotonic()
            final = None
            if status == 200:
                try:
                    final = json.loads(body).get("status") != "processing"
                except ValueError:
                    final = None
            age = headers.get("age")
            task.trips.append((sent, received, str(status), long_poll, final,
                               headers.get("x-cache"), int(age) if age and age.isdigit() else None))
            if status == 200:
                if task.first_200 is None:
                    task.first_200 = received
                if final:
                    task.learned = received
                    break
                if task.new:
                    break  # a new task is asked until its first answer only
                if opts.mode == "poll":
                    await sleep_until_deadline(opts.interval, deadline)
            elif status == 503:
                task.retry_after.append(retry_after(headers))
                await sleep_until_deadline(task.retry_after[-1], deadline)
            else:
                await sleep_until_deadline(opts.interval, deadline)
    finally:
        task.conn.close()


async def open_all(tasks: list[Task]) -> int:
    """Opens every client's connection before t0 (a few at a time, each tried 3 times)."""
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)
    failed = 0

    async def one(task: Task) -> None:
        nonlocal failed
        async with gate:
            for attempt in range(3):
                try:
                    await task.conn.open()
                    return
                except (OSError, asyncio.TimeoutError):
                    await asyncio.sleep(0.2 * (attempt + 1))
            failed += 1

    await asyncio.gather(*(one(t) for t in tasks))
    return failed


async def new_tasks(tasks: list[Task], opts, go: asyncio.Event, t0: list[float],
                    deadline: float) -> None:
    await go.wait()
    await asyncio.sleep(max(0.0, t0[0] + opts.new_at - time.monotonic()))
    started = asyncio.Event()
    started.set()
    await asyncio.gather(*(client(t, opts, started, deadline) for t in tasks))


async def ticker(lags: list[float], stop: asyncio.Event) -> None:
    """How late the driver's event loop wakes up: its own delay in every measure."""
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(0.1)
        lags.append(time.monotonic() - before - 0.1)


async def http_get(hostport: tuple[str, int], path: str) -> tuple[int, bytes]:
    conn = Conn(*hostport)
    try:
        status, _, body = await conn.get(path, 20.0)
        return status, body
    finally:
        conn.close()


def prometheus_counter(text: str, name: str) -> dict[str, float]:
    """`name{label="v"} 3` lines -> {"v": 3.0} (the first label's value)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line[len(name) + 1:].partition("} ")
            label = labels.partition('="')[2].partition('"')[0]
            out[label] = out.get(label, 0.0) + float(value)
    return out


async def run(opts) -> dict:
    n = opts.tasks
    targets = opts.target
    tasks = [Task(opts.first_id + i, False, targets[i % len(targets)]) for i in range(n)]
    fresh = [Task(opts.new_first_id + i, True, targets[i % len(targets)])
             for i in range(opts.new_count)]
    failed = await open_all(tasks)
    go = asyncio.Event()
    t0 = [0.0]
    lags: list[float] = []
    stop = asyncio.Event()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    t0[0] = time.monotonic()
    deadline = t0[0] + opts.seconds
    jobs = [client(t, opts, go, deadline) for t in tasks]
    jobs.append(new_tasks(fresh, opts, go, t0, deadline))
    tick = asyncio.ensure_future(ticker(lags, stop))
    go.set()
    try:
        await asyncio.wait_for(asyncio.gather(*jobs), opts.seconds + 10)
    except asyncio.TimeoutError:
        pass  # every client stops at the deadline; this is a bound only
    ended = time.monotonic()
    stop.set()
    await tick
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    status, body = await http_get(opts.stats, "/stats?calls=1")
    if status != 200:
        raise RuntimeError(f"GET /stats answered {status}")
    stats = json.loads(body)
    rejections: Counter[str] = Counter()
    for hostport in targets:
        status, body = await http_get(hostport, "/metrics")
        if status == 200:
            rejections.update(prometheus_counter(body.decode(), "taskgate_budget_rejections_total"))
    driver = {
        "cpu_s": round(cpu_after.ru_utime + cpu_after.ru_stime
                       - cpu_before.ru_utime - cpu_before.ru_stime, 1),
        "loop_lag_max_ms": round(1000 * max(lags, default=0.0), 1),
        "connections_failed": failed,
    }
    if opts.dump:
        dump(opts.dump, tasks + fresh, stats, t0[0])
    return measure(opts, tasks, fresh, stats, dict(rejections), t0[0], deadline, ended, driver)


def dump(path: str, tasks: list[Task], stats: dict, t0: float) -> None:
    """The run's raw record, times in seconds from t0: every call at the fake (arrival, flow id,
    outcome) and every round trip of every client, for looking into where the time went."""
    record = {
        "calls": [[round(t - t0, 4), f, o] for t, f, o in stats.get("call_list", [])],
        "tasks": [{"flow_id": t.flow_id, "new": t.new, "target": f"{t.target[0]}:{t.target[1]}",
                   "trips": [[round(a - t0, 4), round(b - t0, 4), *rest]
                             for a, b, *rest in t.trips]} for t in tasks],
    }
    with open(path, "w") as out:
        json.dump(record, out)


def percentile(values: list[float], share: float) -> float:
    """Nearest rank; math.inf (not seen within the run) sorts last."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def finite(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or math.isinf(value) else round(value, digits)


def measure(opts, tasks, fresh, stats, rejections, t0, deadline, ended, driver) -> dict:
    n, rate = opts.tasks, opts.rate
    answers: Counter[str] = Counter()
    x_cache: Counter[str] = Counter()
    before_200 = on_first = after_200_503 = wait_503 = wait_503_at_end = 0
    # A long poll answered 503 within a second of its wait's end was not refused while it
    # waited: its wait ran out before its call's turn (30 s cannot cover a 50 s queue).
    wait_ends = to_seconds(opts.wait) - 1.0
    max_age = 0
    known_latency: list[float] = []  # plain GETs of a task already answered 200 once
    for task in tasks + fresh:
        seen_200 = False
        for k, trip in enumerate(task.trips):
            _, _, status, long_poll, _, cache, age = trip
            answers[status] += 1
            if cache:
                x_cache[cache] += 1
            if age is not None:
                max_age = max(max_age, age)
            if status != "200":
                if not seen_200:
                    before_200 += 1
                    on_first += k == 0
                elif status == "503":
                    after_200_503 += 1
                if status == "503" and long_poll:
                    if trip[1] - trip[0] >= wait_ends:
                        wait_503_at_end += 1
                    else:
                        wait_503 += 1
            elif not long_poll and seen_200:
                known_latency.append(trip[1] - trip[0])
            if status == "200":
                seen_200 = True
    first_200 = [t.first_200 - t0 if t.first_200 is not None else math.inf for t in tasks]
    # When taskgate first knew each task: the fake's first answer other than a refusal. A long
    # poll's client hears nothing before the task is final, so in mode wait this stands in for
    # "first answered".
    known_at: dict[str, float] = {}
    for arrival, fid, outcome in stats.get("call_list", []):
        if outcome in ("processing", "succeeded", "failed") and fid not in known_at:
            known_at[fid] = arrival
    first_known = [known_at[str(t.flow_id)] - t0 if str(t.flow_id) in known_at else math.inf
                   for t in tasks]
    first_answer = first_known if opts.mode == "wait" else first_200
    # Where the budget went: a call for a task taskgate already had an answer for is a refresh;
    # counted over the whole run and while some task still had none (there, every refresh was a
    # slot a task with nothing could have had).
    all_known_at = max(first_known) + t0
    seen: set[str] = set()
    calls_first = calls_refresh = refresh_while_unknown = calls_while_unknown = 0
    for arrival, fid, outcome in sorted(stats.get("call_list", [])):
        refresh = fid in seen
        calls_refresh += refresh
        calls_first += not refresh
        if arrival <= all_known_at:
            calls_while_unknown += 1
            refresh_while_unknown += refresh
        if outcome in ("processing", "succeeded", "failed"):
            seen.add(fid)
    new_first = [t.first_200 - t.asked_at if t.first_200 is not None and t.asked_at else math.inf
                 for t in fresh]
    finish_at = stats.get("finish_at_monotonic", {})
    first_final = stats.get("final_answered_monotonic", {})
    lag_upstream, lag_answer, lag_at_fake = [], [], []
    for t in tasks:
        fid = str(t.flow_id)
        # What the schedule alone decides: the fake's first final answer after the finish, before
        # the client's poll (a poll lands up to a second later) adds its part.
        if fid in first_final and fid in finish_at:
            lag_at_fake.append(first_final[fid] - finish_at[fid])
        if t.learned is not None and fid in finish_at:
            lag_upstream.append(t.learned - finish_at[fid])
        else:
            lag_upstream.append(math.inf)
        if t.learned is not None and fid in first_final:
            lag_answer.append(t.learned - first_final[fid])
        else:
            lag_answer.append(math.inf)
    learned = sorted(t.learned for t in tasks if t.learned is not None)
    waits = [w for t in tasks + fresh for w in t.retry_after]
    # A task never seen final was late by more than the end minus when it finished upstream (one
    # never called at all did not finish: no bound).
    lag_at_least = [
        lag if not math.isinf(lag)
        else ended - finish_at[str(t.flow_id)] if str(t.flow_id) in finish_at else math.inf
        for t, lag in zip(tasks, lag_upstream)
    ]
    arrivals = sorted(c[0] for c in stats.get("call_list", []))

    def use(start: float, end: float) -> float | None:
        """Calls arrived in the whole seconds from `start` within [start, end], over R per second.
        Each of those fixed seconds lies in a sliding one, so holds at most R: 100% is every
        second of the span full. The partial last second is left out: against R x ceil(span) a
        6.24 s span that ended just before its seventh burst read 86% with every second full, and
        against R x span a span with a burst at each end reads over 100%."""
        seconds = math.floor(end - start)
        if seconds < 1:
            return None
        calls = sum(1 for a in arrivals if start <= a < start + seconds)
        return calls / (rate * seconds)

    # Demand: from t0 until the last client learned its task's final status (or the end).
    demand_end = learned[-1] if len(learned) == n else ended
    # Saturated demand: while at least R clients still wanted a final status (each processing
    # task wants a refresh every 1 s interval, so R of them alone can spend the whole budget).
    if n < rate:
        saturated_end = t0
    elif len(learned) >= n - rate + 1:
        saturated_end = learned[n - rate]
    else:
        saturated_end = ended
    n_over_r = n / rate
    values = {
        "last_first_200_s": max(first_answer),
        "new_max_s": max(new_first, default=0.0),
        "completion_p90_s": percentile(lag_upstream, 0.9),
        "completion_max_s": max(lag_upstream),
        "budget_use": use(t0, demand_end),
        "budget_use_saturated": use(t0, saturated_end),
    }
    targets = {
        "budget_503_after_200": {"limit": 0, "value": after_200_503,
                                 "ok": after_200_503 == 0},
        "wait_503": {"limit": 0, "value": wait_503,
                     "ok": wait_503 == 0 or wait_503 <= rejections.get("queue_full", 0)},
        "last_first_200_s": {"limit": round(n_over_r + 3, 2),
                             "value": finite(values["last_first_200_s"]),
                             "ok": values["last_first_200_s"] <= n_over_r + 3,
                             "more_than": round(ended - t0, 2)},
        "new_max_s": {"limit": 1.0, "value": finite(values["new_max_s"]),
                      "ok": values["new_max_s"] <= 1.0},
        "completion_p90_s": {"limit": round(0.9 * n_over_r + 1, 2),
                             "value": finite(values["completion_p90_s"]),
                             "ok": values["completion_p90_s"] <= 0.9 * n_over_r + 1,
                             "more_than": finite(percentile(lag_at_least, 0.9))},
        "completion_max_s": {"limit": round(n_over_r + 2, 2),
                             "value": finite(values["completion_max_s"]),
                             "ok": values["completion_max_s"] <= n_over_r + 2,
                             "more_than": finite(max(lag_at_least))},
        "budget_use": {"limit": 0.95, "value": finite(values["budget_use"], 3),
                       "ok": values["budget_use"] is not None and values["budget_use"] >= 0.95},
        "budget_use_saturated": {
            "limit": 0.95, "value": finite(values["budget_use_saturated"], 3),
            "ok": values["budget_use_saturated"] is None or values["budget_use_saturated"] >= 0.95},
        "max_calls_in_1s": {"limit": rate, "value": stats["max_in_any_1s_window"],
                            "ok": stats["max_in_any_1s_window"] <= rate},
        "limit_exceeded": {"limit": 0, "value": stats.get("limit_exceeded", 0),
                           "ok": stats.get("limit_exceeded", 0) == 0},
    }
    for target in targets.values():
        at_least = target.get("more_than")
        if target["value"] is None and at_least is not None and at_least <= target["limit"]:
            target["ok"] = None  # not seen by the end, which came before the limit: undecided
    return {
        "scenario": opts.name,
        "setup": opts.setup,
        "tasks": n,
        "mode": opts.mode,
        "replicas": len(opts.target),
        "rate": rate,
        "bound_s": opts.seconds,
        "wall_s": round(ended - t0, 2),
        "answers": dict(sorted(answers.items())),
        "non_200": {k: v for k, v in sorted(answers.items()) if k != "200"},
        "non_200_before_first_200": before_200,
        "non_200_on_first_request": on_first,
        "wait_503_at_end": wait_503_at_end,
        "budget_rejections": rejections,
        "tasks_first_answered": sum(1 for v in first_answer if not math.isinf(v)),
        "first_answered_by": "taskgate's first upstream answer" if opts.mode == "wait"
        else "the client's first 200",
        "last_client_first_200_s": finite(max(first_200)),
        "last_first_known_upstream_s": finite(max(first_known)),
        "tasks_learned_final": len(learned),
        "new_tasks_s": [finite(v) for v in new_first],
        "new_tasks_non_200": sum(1 for t in fresh for trip in t.trips if trip[2] != "200"),
        "retry_after_s": {
            "p50": percentile(waits, 0.5) if waits else None,
            "max": max(waits) if waits else None,
        },
        "known_task_latency_s": {
            "p50": finite(percentile(known_latency, 0.5), 3) if known_latency else None,
            "p99": finite(percentile(known_latency, 0.99), 3) if known_latency else None,
            "max": finite(max(known_latency), 3) if known_latency else None,
        },
        "completion_from_first_final_answer": {
            "p90_s": finite(percentile(lag_answer, 0.9)), "max_s": finite(max(lag_answer)),
        },
        "completion_at_fake_p90_s": finite(percentile(lag_at_fake, 0.9)) if lag_at_fake else None,
        "completion_median_s": finite(percentile(lag_upstream, 0.5)),
        "demand_span_s": round(demand_end - t0, 2),
        "saturated_span_s": round(saturated_end - t0, 2),
        "upstream_calls": stats["calls"],
        "upstream_calls_first": calls_first,
        "upstream_calls_refresh": calls_refresh,
        "calls_while_some_task_unknown": calls_while_unknown,
        "refresh_calls_while_some_task_unknown": refresh_while_unknown,
        "upstream_outcomes": stats.get("outcomes", {}),
        "round_trips": sum(len(t.trips) for t in tasks + fresh),
        "x_cache": dict(sorted(x_cache.items())),
        "max_age_s": max_age,
        "cut_at_deadline": sum(t.cut for t in tasks + fresh),
        "reconnects": sum(t.conn.reconnects for t in tasks + fresh),
        "driver": driver,
        "load": opts.load,
        "targets": targets,
    }


# ---- report ------------------------------------------------------------------------------------

def mark(ok: bool | None) -> str:
    return "?" if ok is None else "✓" if ok else "✗"


def seconds_cell(target: dict, unseen: int = 0) -> str:
    """The value; or, when some task was not seen by the end, a lower bound: "> x"."""
    value, at_least = target["value"], target.get("more_than")
    if value is not None:
        shown = f"{value:.2f}"
    elif at_least is not None:
        shown = f"> {at_least:.2f}"
    else:
        shown = "not within the run"
    if unseen:
        shown += f" ({unseen} unseen)"
    return f"{shown} (≤ {target['limit']:g}) {mark(target['ok'])}"


def counts(values: dict) -> str:
    return ", ".join(f"{v} × {k}" for k, v in values.items()) or "none"


def report_rows(rows: list[dict]) -> str:
    out = [
        "| N, mode, replicas | answers other than 200 (before the task's first 200 / on its "
        "first request) | 503 after a 200 (0) | `?wait=` refused while waiting (0 unless queue full) "
        "| last task first answered, s | 10 new tasks at 6 s: max s | completion p90, s "
        "| completion max, s | budget use while any / ≥ R clients wait (≥ 95%) "
        "| max calls in 1 s (≤ R) "
        "| RequestLimitExceeded (0) | upstream calls | round trips |",
        "| --- | --- | ---: | ---: | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        t = r["targets"]
        use_cell = " / ".join(
            f"{100 * u['value']:.0f}% {mark(u['ok'])}" if u["value"] is not None else "-"
            for u in (t["budget_use"], t["budget_use_saturated"]))
        refused = f"{t['wait_503']['value']} {mark(t['wait_503']['ok'])}"
        if r["budget_rejections"].get("queue_full"):
            refused += f" (queue full: {r['budget_rejections']['queue_full']:g})"
        if r.get("wait_503_at_end"):
            refused += f" ({r['wait_503_at_end']} when their wait ran out)"
        non_200 = counts(r["non_200"])
        if r["non_200"]:
            non_200 += f" ({r['non_200_before_first_200']} / {r['non_200_on_first_request']})"
        unseen_first = r["tasks"] - r["tasks_first_answered"]
        unseen_final = r["tasks"] - r["tasks_learned_final"]
        new_unseen = sum(1 for v in r["new_tasks_s"] if v is None)
        out.append(
            f"| {r['tasks']}, {r['mode']}, {r['replicas']} | {non_200} "
            f"| {t['budget_503_after_200']['value']} {mark(t['budget_503_after_200']['ok'])} "
            f"| {refused} | {seconds_cell(t['last_first_200_s'], unseen_first)}"
            f"{' (upstream)' if r['mode'] == 'wait' else ''} "
            f"| {seconds_cell(t['new_max_s'], new_unseen)} "
            f"| {seconds_cell(t['completion_p90_s'], unseen_final)} "
            f"| {seconds_cell(t['completion_max_s'], unseen_final)} | {use_cell} "
            f"| {t['max_calls_in_1s']['value']} {mark(t['max_calls_in_1s']['ok'])} "
            f"| {t['limit_exceeded']['value']} {mark(t['limit_exceeded']['ok'])} "
            f"| {r['upstream_calls']} | {r['round_trips']} |"
        )
    return "\n".join(out)


def detail_rows(rows: list[dict]) -> str:
    out = [
        "| N, mode, replicas | wall / bound s | tasks first answered / learned final "
        "| last client first 200 / last first upstream answer, s "
        "| completion at the fake (its first final answer): p90 s "
        "| completion from the fake's first final answer: p90 / max s | completion median s "
        "| demand span s (any / ≥ R clients waiting) "
        "| answer time, task known to its client (poll): p50 / p99 / max s "
        "| new tasks: answers other than 200 | X-Cache | max Age s | Retry-After p50 / max s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        c = r["completion_from_first_final_answer"]
        lat = r["known_task_latency_s"]
        out.append(
            f"| {r['tasks']}, {r['mode']}, {r['replicas']} | {r['wall_s']:.1f} / {r['bound_s']:g} "
            f"| {r['tasks_first_answered']} / {r['tasks_learned_final']} of {r['tasks']} "
            f"| {fmt(r['last_client_first_200_s'])} / {fmt(r['last_first_known_upstream_s'])} "
            f"| {fmt(r.get('completion_at_fake_p90_s'))} "
            f"| {fmt(c['p90_s'])} / {fmt(c['max_s'])} | {fmt(r['completion_median_s'])} "
            f"| {r['demand_span_s']:.1f} / {r['saturated_span_s']:.1f} "
            f"| {fmt3(lat['p50'])} / {fmt3(lat['p99'])} / {fmt3(lat['max'])} "
            f"| {r['new_tasks_non_200']} | {counts(r['x_cache'])} | {r['max_age_s']} "
            f"| {fmt0(r.get('retry_after_s', {}).get('p50'))} / "
            f"{fmt0(r.get('retry_after_s', {}).get('max'))} |"
        )
    out += [
        "",
        "| N, mode, replicas | upstream calls: for a task with no answer yet / refreshes "
        "| while some task had no answer: calls, of them refreshes "
        "| budget rejections (taskgate's /metrics) | upstream calls by outcome "
        "| requests cut at the end / reconnects | driver CPU s, loop lag max ms | load before |",
        "| --- | ---: | ---: | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        d = r["driver"]
        rejected = {reason: int(v) for reason, v in r["budget_rejections"].items()}
        out.append(
            f"| {r['tasks']}, {r['mode']}, {r['replicas']} "
            f"| {r.get('upstream_calls_first', '-')} / {r.get('upstream_calls_refresh', '-')} "
            f"| {r.get('calls_while_some_task_unknown', '-')}, "
            f"{share(r.get('refresh_calls_while_some_task_unknown'), r.get('calls_while_some_task_unknown'))} "
            f"| {counts(rejected)} "
            f"| {counts(r['upstream_outcomes'])} | {r['cut_at_deadline']} / {r['reconnects']} "
            f"| {d['cpu_s']}, {d['loop_lag_max_ms']} | {r['load']} |"
        )
    return "\n".join(out)


def fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def share(part, whole) -> str:
    if part is None or not whole:
        return "-"
    return f"{part} ({100 * part / whole:.0f}%)"


def fmt0(value) -> str:
    return "-" if value is None else f"{value:g}"


def fmt3(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def report(path: str, json_out: str | None) -> str:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    if json_out:
        with open(json_out, "w") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")
    if not rows:
        return "(no scenario ran)"
    return report_rows(rows) + "\n\nDetails:\n\n" + detail_rows(rows)


def summary(path: str) -> str:
    """One line on the last run in FILE.jsonl, for the log."""
    lines = [line for line in open(path) if line.strip()]
    r = json.loads(lines[-1])
    t = r["targets"]
    return (f"[overload] {r['scenario']}: non-200 {counts(r['non_200'])}; last first 200 "
            f"{fmt(t['last_first_200_s']['value'])} s; new tasks max {fmt(t['new_max_s']['value'])} s; "
            f"completion p90 / max {fmt(t['completion_p90_s']['value'])} / "
            f"{fmt(t['completion_max_s']['value'])} s; budget use {fmt(t['budget_use']['value'])} "
            f"/ {fmt(t['budget_use_saturated']['value'])}; "
            f"max in 1 s {t['max_calls_in_1s']['value']}; limit exceeded "
            f"{t['limit_exceeded']['value']}; calls {r['upstream_calls']}; "
            f"round trips {r['round_trips']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--name", required=True)
    p.add_argument("--setup", default="")
    p.add_argument("--load", default="", help="a note on the machine's load, for the report")
    p.add_argument("--mode", choices=("poll", "wait"), required=True)
    p.add_argument("--tasks", type=int, required=True)
    p.add_argument("--target", type=loopback, nargs="+", required=True,
                   help="taskgate HOST:PORT, one or more (clients round-robin over them)")
    p.add_argument("--stats", type=loopback, required=True, help="fake upstream HOST:PORT")
    p.add_argument("--first-id", type=int, default=100001)
    p.add_argument("--new-first-id", type=int, default=900001)
    p.add_argument("--new-count", type=int, default=10)
    p.add_argument("--new-at", type=float, default=6.0, help="seconds after t0")
    p.add_argument("--rate", type=int, default=20, help="the budget R, calls per second")
    p.add_argument("--interval", type=float, default=1.0, help="poll interval, seconds")
    p.add_argument("--wait", default="30s", help="the ?wait= of mode wait")
    p.add_argument("--seconds", type=float, help="bound of the run (default N/R + 40)")
    p.add_argument("--dump", help="also write the run's raw calls and round trips here (JSON)")
    p = sub.add_parser("report")
    p.add_argument("file")
    p.add_argument("--json", help="also write the runs as one JSON array here")
    p = sub.add_parser("summary")
    p.add_argument("file")
    opts = parser.parse_args()
    if opts.command == "report":
        print(report(opts.file, opts.json))
        return 0
    if opts.command == "summary":
        print(summary(opts.file))
        return 0
    if not 1 <= opts.tasks <= 5000:
        parser.error("--tasks must be 1..5000")
    if not 0 <= opts.new_count <= 100:
        parser.error("--new-count must be 0..100")
    if opts.seconds is None:
        opts.seconds = opts.tasks / opts.rate + 40
    if not 0 < opts.seconds <= 600:
        parser.error("--seconds must be in (0, 600]")
    print(json.dumps(asyncio.run(run(opts))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

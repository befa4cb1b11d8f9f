#!/usr/bin/env python3
"""Check that a Grafana dashboard only queries metrics taskgate exports.

    python3 deploy/grafana/check_dashboard.py deploy/grafana/taskgate.json http://127.0.0.1:8080/metrics

The list of exported names is taken from a running taskgate's /metrics (any URL urllib opens,
file:// included). Every PromQL `expr` of every panel (rows' nested panels included) and the
`label_values(...)` / `query_result(...)` queries of template variables are parsed for metric
names; histograms count as exported through their _bucket, _sum and _count series, summaries
through the base name, _sum and _count. Label names used in matchers are checked against the
labels the series carry, plus the target labels Prometheus adds (job, instance, ...). Panels
with queries must use the templated data source.

Exits 0 when everything is known, 1 listing each unknown name, 2 on a usage or fetch error.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field

# Labels Prometheus attaches at scrape time (static configs, ServiceMonitor, kubernetes_sd).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint", "node"}

PROMQL_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
}

DATASOURCE_VARIABLES = {"${datasource}", "$datasource", "${DS_PROMETHEUS}", "$DS_PROMETHEUS"}

IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
GRAFANA_VAR_RE = re.compile(r"\$\{[^}]*\}|\$[a-zA-Z_][a-zA-Z0-9_]*|\[\[[^\]]*\]\]")
NAME_MATCHER_RE = re.compile(r'__name__\s*=\s*"((?:[^"\\]|\\.)*)"')
SELECTOR_RE = re.compile(r"(" + IDENT + r")?\s*\{([^{}]*)\}")
MATCHER_LABEL_RE = re.compile(r"(" + IDENT + r")\s*(?:=~|!~|!=|=)")
RANGE_RE = re.compile(r"\[[^\[\]]*\]")
GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
TOKEN_RE = re.compile(r"(?<![\w.:])(" + IDENT + r")(\s*\()?")


@dataclass
class Exported:
    """Series names taskgate exposes, with the label names seen on each."""

    labels: dict[str, set[str] | None] = field(default_factory=dict)
    histograms: set[str] = field(default_factory=set)

    def add(self, name: str, label_names: set[str] | None) -> None:
        known = self.labels.get(name)
        if label_names is None:
            self.labels.setdefault(name, None)
        elif known is None:
            self.labels[name] = set(label_names)
        else:
            known.update(label_names)


def parse_exposition(text: str) -> Exported:
    """Parse the Prometheus text format into exported series names and their label names."""
    exported = Exported()
    sample_re = re.compile(r"^(" + IDENT + r")(\{(.*)\})?\s+\S+")
    label_re = re.compile(r'(' + IDENT + r')="(?:[^"\\]|\\.)*"')
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                name, kind = parts[2], parts[3]
                if kind == "histogram":
                    exported.histograms.add(name)
                    for suffix in ("_bucket", "_sum", "_count"):
                        exported.add(name + suffix, None)
                elif kind == "summary":
                    for suffix in ("", "_sum", "_count"):
                        exported.add(name + suffix, None)
                elif kind == "counter" and not name.endswith("_total"):
                    exported.add(name + "_total", None)
                else:
                    exported.add(name, None)
            continue
        match = sample_re.match(line)
        if match:
            names = set(label_re.findall(match.group(3) or ""))
            exported.add(match.group(1), names)
    return exported


@dataclass
class Reference:
    where: str
    metric: str
    labels: set[str]


def references(expr: str, where: str) -> list[Reference]:
    """Metric names (with the label names matched on them) referenced by one PromQL expression."""
    refs: list[Reference] = []
    for name in NAME_MATCHER_RE.findall(expr):
        refs.append(Reference(where, name, set()))
    text = STRING_RE.sub('""', expr)
    text = GRAFANA_VAR_RE.sub("0", text)

    def selector(match: re.Match[str]) -> str:
        name = match.group(1)
        labels = set(MATCHER_LABEL_RE.findall(match.group(2))) - {"__name__"}
        if name and name not in PROMQL_KEYWORDS:
            refs.append(Reference(where, name, labels))
            return " "
        return " "

    text = SELECTOR_RE.sub(selector, text)
    text = RANGE_RE.sub(" ", text)
    previous = None
    while previous != text:
        previous = text
        text = GROUPING_RE.sub(" ", text)
    for token in TOKEN_RE.finditer(text):
        name, call = token.group(1), token.group(2)
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        refs.append(Reference(where, name, set()))
    return refs


def variable_queries(variable: dict) -> list[str]:
    """PromQL hidden in a template variable's query, if any."""
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query") or ""
    if not isinstance(query, str) or variable.get("type") != "query":
        return []
    query = query.strip()
    match = re.fullmatch(r"label_values\((.*),\s*(" + IDENT + r")\s*\)", query, re.S)
    if match:
        return [match.group(1)]
    match = re.fullmatch(r"query_result\((.*)\)", query, re.S)
    if match:
        return [match.group(1)]
    return []


def walk_panels(panels: list[dict]):
    for panel in panels or []:
        yield panel
        yield from walk_panels(panel.get("panels") or [])


def datasource_uid(ds) -> str | None:
    if isinstance(ds, dict):
        return ds.get("uid")
    if isinstance(ds, str):
        return ds
    return None


def check(dashboard: dict, exported: Exported) -> tuple[list[str], int]:
    findings: list[str] = []
    refs: list[Reference] = []
    expressions = 0
    for panel in walk_panels(dashboard.get("panels") or []):
        title = f"panel '{panel.get('title', '')}' (id {panel.get('id')})"
        targets = [t for t in panel.get("targets") or [] if isinstance(t, dict)]
        for target in targets:
            expr = target.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                continue
            expressions += 1
            where = f"{title}, refId {target.get('refId', '?')}"
            refs.extend(references(expr, where))
            uid = datasource_uid(target.get("datasource") or panel.get("datasource"))
            if uid not in DATASOURCE_VARIABLES:
                findings.append(f"{where}: data source {uid!r} is not the templated one")
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        for expr in variable_queries(variable):
            expressions += 1
            refs.extend(references(expr, f"variable '{variable.get('name')}'"))
    if expressions == 0:
        findings.append("no PromQL expression found: is this a Grafana dashboard?")

    for ref in refs:
        if ref.metric not in exported.labels:
            hint = ""
            if ref.metric in exported.histograms:
                hint = " (a histogram: query its _bucket, _sum or _count series)"
            else:
                for base in exported.histograms:
                    if ref.metric.startswith(base + "_"):
                        hint = f" (histogram {base} has only _bucket, _sum and _count)"
            findings.append(f"{ref.where}: unknown metric {ref.metric!r}{hint}")
            continue
        known = exported.labels[ref.metric]
        if known is None:
            continue  # family with no samples yet: its labels cannot be known
        allowed = known | TARGET_LABELS
        for label in sorted(ref.labels - allowed):
            findings.append(
                f"{ref.where}: metric {ref.metric!r} has no label {label!r} "
                f"(it has: {', '.join(sorted(known)) or 'none'})"
            )
    return findings, expressions


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dashboard", help="dashboard JSON file")
    parser.add_argument("metrics_url", help="a running taskgate's /metrics URL (or a file:// URL)")
    parser.add_argument("--timeout", type=float, default=10.0, help="fetch timeout in seconds")
    args = parser.parse_args(argv)

    try:
        with open(args.dashboard, encoding="utf-8") as handle:
            dashboard = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        print(f"check_dashboard: cannot read {args.dashboard}: {err}", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(args.metrics_url, timeout=args.timeout) as response:
            text = response.read().decode("utf-8")
    except (OSError, urllib.error.URLError, ValueError) as err:
        print(f"check_dashboard: cannot fetch {args.metrics_url}: {err}", file=sys.stderr)
        return 2

    exported = parse_exposition(text)
    if not exported.labels:
        print(f"check_dashboard: no metrics found at {args.metrics_url}", file=sys.stderr)
        return 2

    findings, expressions = check(dashboard, exported)
    if findings:
        print(f"{args.dashboard}: {len(findings)} problem(s):", file=sys.stderr)
        for finding in findings:
            print(f"  {finding}", file=sys.stderr)
        return 1
    print(
        f"{args.dashboard}: OK, {expressions} expressions use only the "
        f"{len(exported.labels)} series names exported at {args.metrics_url}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

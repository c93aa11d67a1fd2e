"""The self-contained HTML report of a run: summary tables and inline SVG plots drawn here (no JS, no CDN), so
it opens anywhere offline. Built from the result JSON alone, so an old result.json can be redrawn.

Plots: latency over time (p50 and p99 of each second), calls per second (ok and errors), and the HDR percentile
distribution on a log axis of 1/(1-p) (so 90%, 99%, 99.9% are evenly spaced), with the no-op baseline overlaid
when the run measured one.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

W, H = 760, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 20, 20, 44
COLORS = {
    "p50": "#1f77b4",
    "p99": "#d62728",
    "ok": "#2ca02c",
    "errors": "#d62728",
    "run": "#1f77b4",
    "baseline": "#7f7f7f",
}
Point = tuple[float, float]


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exponent:
            return step * exponent
    return 10 * exponent


def _fmt(value: float) -> str:
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"


def line_chart(
    title: str,
    series: list[tuple[str, str, list[Point]]],
    *,
    x_ticks: list[tuple[float, str]],
    x_label: str,
    y_label: str,
    x_max: float | None = None,
    markers: bool = False,
) -> str:
    """An SVG line chart; each series is (name, color, points). Empty series are drawn as a note. `markers` dots
    every point: for sparse series, whose lone points a line alone would not show."""
    points = [p for _, _, pts in series for p in pts]
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#ccc"/>',
    ]
    if not points:
        out.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no data</text></svg>')
        return "\n".join(out)
    xmax = x_max if x_max is not None else max(max(x for x, _ in points), 1.0)
    ymax = _nice_max(max(y for _, y in points))

    def sx(x: float) -> float:
        return LEFT + plot_w * (x / xmax if xmax else 0)

    def sy(y: float) -> float:
        return TOP + plot_h * (1 - y / ymax)

    for k in range(5):
        y = ymax * k / 4
        out.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 6}" y="{sy(y) + 4:.1f}" text-anchor="end" font-size="11">{_fmt(y)}</text>')
    for x, label in x_ticks:
        if 0 <= x <= xmax:
            out.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#eee"/>')
            out.append(
                f'<text x="{sx(x):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle" font-size="11">'
                f"{html.escape(label)}</text>"
            )
    out.append(
        f'<text x="{LEFT + plot_w / 2}" y="{H - 6}" text-anchor="middle" font-size="12">{html.escape(x_label)}</text>'
    )
    out.append(
        f'<text x="14" y="{TOP + plot_h / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 14 {TOP + plot_h / 2})">{html.escape(y_label)}</text>'
    )
    for n, (name, color, pts) in enumerate(series):
        if pts:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            out.append(
                f'<polyline class="series" data-name="{html.escape(name)}" fill="none" stroke="{color}" '
                f'stroke-width="1.8" points="{path}"/>'
            )
            if markers:
                out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>' for x, y in pts]
        out.append(
            f'<rect x="{LEFT + 10 + n * 150}" y="{TOP + 8}" width="12" height="3" fill="{color}"/>'
            f'<text x="{LEFT + 26 + n * 150}" y="{TOP + 13}" font-size="11">{html.escape(name)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def _second_ticks(seconds: int) -> list[tuple[float, str]]:
    step = max(1, math.ceil(seconds / 10))
    return [(float(s), f"{s}s") for s in range(0, seconds + 1, step)]


def latency_over_time(result: dict[str, Any]) -> str:
    rows = result.get("timeline", [])
    # A point per second, at its middle; seconds with no successful call leave a gap in neither line.
    p50 = [(r["second"] + 0.5, r["p50_ms"]) for r in rows if r.get("p50_ms") is not None]
    p99 = [(r["second"] + 0.5, r["p99_ms"]) for r in rows if r.get("p99_ms") is not None]
    return line_chart(
        "latency over time",
        [("p50 per second", COLORS["p50"], p50), ("p99 per second", COLORS["p99"], p99)],
        x_ticks=_second_ticks(len(rows)),
        x_label="time since warm-up ended",
        y_label="latency (ms)",
        x_max=float(max(len(rows), 1)),
    )


def calls_over_time(result: dict[str, Any]) -> str:
    rows = result.get("timeline", [])
    ok = [(r["second"] + 0.5, float(r["ok"])) for r in rows]
    errors = [(r["second"] + 0.5, float(r["errors"])) for r in rows]
    return line_chart(
        "calls per second",
        [("ok per second", COLORS["ok"], ok), ("errors per second", COLORS["errors"], errors)],
        x_ticks=_second_ticks(len(rows)),
        x_label="time since warm-up ended",
        y_label="calls",
        x_max=float(max(len(rows), 1)),
    )


_NINES = ((0.0, "0%"), (90.0, "90%"), (99.0, "99%"), (99.9, "99.9%"), (99.99, "99.99%"), (99.999, "99.999%"))


def _nines_x(percentile: float) -> float:
    """HDR plots' x axis: log10(1 / (1 - p)), so each further nine is one step right."""
    return math.log10(100.0 / max(100.0 - percentile, 1e-4))


def percentile_plot(result: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    def points(dist: list[dict[str, float]]) -> list[Point]:
        if not dist:
            return []
        finite = [(_nines_x(p["percentile"]), p["ms"]) for p in dist if p["percentile"] < 100.0]
        return [*finite, (_nines_x(99.9999), dist[-1]["ms"])]  # the max, at the right edge

    series = [("this run", COLORS["run"], points(result.get("distribution", [])))]
    if baseline is not None:
        series.append(("no-op baseline", COLORS["baseline"], points(baseline.get("distribution", []))))
    xmax = max((x for _, _, pts in series for x, _ in pts), default=1.0)
    return line_chart(
        "latency by percentile",
        series,
        x_ticks=[(_nines_x(p), label) for p, label in _NINES],
        x_label="percentile (log scale of 1/(1-p))",
        y_label="latency (ms)",
        x_max=max(xmax, 3.0),
    )


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _machine(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """The `machine` section as rows: what a reader on another machine needs to weigh the figures."""
    commit = facts.get("git_commit") or "unknown"
    if facts.get("git_dirty"):
        commit += " (uncommitted changes)"
    loads = facts.get("load_average") or {}

    def load(when: str) -> str:
        values = loads.get(when)
        return " / ".join(f"{v:g}" for v in values) if values else "unknown"

    cores = str(facts.get("cpu_count"))
    if facts.get("cpus_usable") and facts.get("cpus_usable") != facts.get("cpu_count"):
        cores = f"{facts['cpus_usable']} usable of {facts['cpu_count']}"
    return [
        ("commit", commit),
        ("finmesh", str(facts.get("finmesh_version"))),
        ("host", str(facts.get("host"))),
        ("cores", cores),
        ("load average 1/5/15 min, start", load("start")),
        ("load average 1/5/15 min, end", load("end")),
        ("Python", str(facts.get("python"))),
        ("grpcio", str(facts.get("grpcio"))),
        ("platform", str(facts.get("platform"))),
    ]


def _figures(result: dict[str, Any]) -> list[tuple[str, str]]:
    lat = result["latency_ms"]
    rows = [
        ("calls (measured)", str(result["calls"])),
        ("ok", str(result["ok"])),
        ("errors", str(result["error_count"])),
        ("elapsed", f"{result['elapsed_s']:.2f} s"),
        ("throughput", f"{result['throughput']:.1f} ok/s"),
    ]
    rows += [(name.replace("_", "."), f"{lat[name]:.3f} ms") for name in ("p50", "p90", "p99", "p99_9", "max")]
    rows += [("late sends (open loop)", str(result["late_sends"])), ("warm-up calls", str(result["warmup_calls"]))]
    return rows


def _by_label(parts: dict[str, dict[str, Any]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("scenario", "calls", "ok", "errors", "ok/s", "p50 ms", "p99 ms", "max ms"))
    rows = []
    for name, p in parts.items():
        lat = p["latency_ms"]
        errors = ", ".join(f"{k}={v}" for k, v in p["errors"].items()) or "0"
        cells = (
            name,
            str(p["calls"]),
            str(p["ok"]),
            errors,
            f"{p['throughput']:.1f}",
            f"{lat['p50']:.2f}",
            f"{lat['p99']:.2f}",
            f"{lat['max']:.2f}",
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:820px}
table{border-collapse:collapse;margin:8px 0 16px}th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
th{font-weight:600}svg.plot{display:block;margin:8px 0 20px}h2{margin-top:28px}code{background:#f4f4f4}"""


def render(data: dict[str, Any]) -> str:
    """The whole report from the result JSON (see finmesh.load.run.result_document)."""
    run = data.get("run", {})
    baseline = data.get("baseline")
    parts = [
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>finmesh load: '
        f"{html.escape(str(run.get('scenario', '')))}</title><style>{STYLE}</style></head><body>",
        "<h1>finmesh load</h1>",
        _table([(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in run.items()]),
    ]
    if data.get("machine"):
        parts += ["<h2>Machine and code</h2>", _table(_machine(data["machine"]))]
    parts += [
        "<h2>Figures</h2>",
        _table(_figures(data)),
    ]
    if data["errors"]:
        parts += ["<h2>Errors by status code</h2>", _table([(k, str(v)) for k, v in data["errors"].items()])]
    if data.get("by_label"):
        parts += ["<h2>By scenario</h2>", _by_label(data["by_label"])]
    if baseline is not None:
        ratios = data.get("ratio_to_baseline", {})
        parts += [
            "<h2>No-op baseline (same machine, same run)</h2>",
            _table(_figures(baseline)),
            "<h3>This run ÷ baseline</h3>",
            _table([(k, f"{v:.2f}×") for k, v in ratios.items()]),
        ]
    parts += [
        "<h2>Latency over time</h2>",
        latency_over_time(data),
        "<h2>Calls per second</h2>",
        calls_over_time(data),
        "<h2>Latency by percentile</h2>",
        percentile_plot(data, baseline),
        "<p>Open loop measures each latency from the call's intended send time (coordinated-omission "
        "correction); warm-up calls are left out of every figure.</p></body></html>",
    ]
    return "\n".join(parts)

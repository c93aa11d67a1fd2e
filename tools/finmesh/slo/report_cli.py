"""`finmesh slo report`: each service's availability and each latency class's figures over a window, from
Prometheus, as a table here and optionally as a self-contained HTML page with a chart per service."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from finmesh.slo import report as r
from finmesh.slo.objectives import BUDGET_PERIOD
from finmesh.slo.report_html import render

EXIT_PROMETHEUS = 2


def parse_at(text: str) -> float:
    """Unix seconds, or an RFC 3339 time (a time without an offset is read as UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not unix seconds nor an RFC 3339 time: {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _window(text: str) -> str:
    try:
        r.parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="service-quality report: availability, error budget, burn rate, latency percentiles",
        description=__doc__,
    )
    p.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    p.add_argument(
        "--window", type=_window, default=BUDGET_PERIOD, help="Prometheus duration (default %(default)s: the budget)"
    )
    p.add_argument("--html", type=Path, help="also write the report as a self-contained HTML page here")
    p.add_argument("--at", type=parse_at, help="the window's end: RFC 3339 or unix seconds (default now)")
    p.set_defaults(func=cmd_report)


def format_text(report: r.Report) -> str:
    when = datetime.fromtimestamp(report.at, UTC).isoformat(timespec="seconds")
    lines = [f"finmesh service quality: {report.window} ending {when} (Prometheus {report.prometheus})", ""]
    burn_heads = [f"{'burn ' + w:>8}" for w in r.BURN_WINDOWS]
    lines.append(
        f"{'service':<10} {'availability':>12} {'objective':>9} {'budget left':>11} {' '.join(burn_heads)} "
        f"{'calls':>12}"
    )
    for s in report.services:
        a = s.availability
        lines.append(
            f"{a.service:<10} {r.percent(a.ratio, digits=3):>12} {r.percent(a.target, digits=3):>9} "
            f"{_budget(a):>11} {_burns(a)} {r.calls(a.window.total):>12}"
        )
    lines += ["", f"{'latency class':<16} {'threshold':>9} {'under it':>10} {'objective':>9} {'budget left':>11} "
              f"{' '.join(burn_heads)} {'calls':>12} {'p50':>9} {'p95':>9} {'p99':>9}"]  # fmt: skip
    for s in report.services:
        for c in s.latency:
            quantiles = " ".join(f"{r.millis(c.percentiles.get(q)):>9}" for q in r.QUANTILES)
            lines.append(
                f"{c.name:<16} {r.millis(c.threshold_seconds):>9} {r.percent(c.ratio, digits=3):>10} "
                f"{r.percent(c.target, digits=1):>9} {_budget(c):>11} {_burns(c)} {r.calls(c.window.total):>12} "
                f"{quantiles}"
            )
    return "\n".join(lines)


def _budget(figures: r.Figures) -> str:
    return "-" if figures.budget_left is None else r.percent(figures.budget_left, digits=1)


def _burns(figures: r.Figures) -> str:
    return " ".join(f"{r.rate(figures.burn_rate(w)):>8}" for w in r.BURN_WINDOWS)


def cmd_report(args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(r.collect(args.prometheus, args.window, at=args.at))
    except r.PrometheusError as error:
        print(f"slo report: {error}", file=sys.stderr)
        return EXIT_PROMETHEUS
    print(format_text(report))
    if args.html is not None:
        args.html.write_text(render(report), encoding="utf-8")
        print(f"\nwrote {args.html}")
    return 0

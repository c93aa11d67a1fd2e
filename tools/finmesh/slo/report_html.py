"""The service-quality report as one self-contained HTML page: tables and inline SVG charts drawn by the load
report's chart code (finmesh.load.report), no JS, no CDN, so it opens anywhere offline and can be mailed."""

from __future__ import annotations

import html
from datetime import UTC, datetime

from finmesh.load.report import STYLE, line_chart
from finmesh.slo import report as text
from finmesh.slo.report import Figures, Report, ServiceReport

ERROR_COLOR = "#d62728"
BUDGET_COLOR = "#7f7f7f"


def _row(cells: list[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"


def _table(head: list[str], rows: list[list[str]]) -> str:
    return "<table>" + _row(head, "th") + "".join(_row(r) for r in rows) + "</table>"


def _objective_cells(figures: Figures) -> list[str]:
    return [
        text.percent(figures.ratio, digits=3),
        text.percent(figures.target, digits=3),
        text.percent(figures.budget_left, digits=1),
        *(text.rate(figures.burn_rate(w)) for w in text.BURN_WINDOWS),
        text.calls(figures.window.total),
    ]


def error_chart(report: Report, service: ServiceReport) -> str:
    """Error ratio per step over the window, against the ratio the objective allows (the budget burning at rate 1)."""
    start = report.at - report.window_seconds
    days = report.window_seconds / 86400

    def x(t: float) -> float:
        return (t - start) / 86400

    measured = [(x(t), 100 * r) for t, r in service.error_ratio if r is not None]
    allowed = 100 * (1 - service.availability.target)
    step = max(1, round(days / 7))
    ticks = [(float(d), f"-{days - d:g}d" if d < days else "end") for d in range(0, int(days) + 1, step)]
    series = [(f"error ratio per {text.duration(report.step_seconds)}", ERROR_COLOR, measured)]
    if measured:  # else the chart says "no data" rather than draw the objective alone
        series.append(("objective (burn 1×)", BUDGET_COLOR, [(0.0, allowed), (days, allowed)]))
    return line_chart(
        f"{service.availability.service}: error ratio",
        series,
        x_ticks=ticks,
        x_label=f"days of the window (ending {_when(report.at)})",
        y_label="calls failed by the server (%)",
        x_max=days,
        markers=True,  # a step with calls between steps without shows as a dot
    )


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def render(report: Report) -> str:
    burn_heads = [f"burn {w}" for w in text.BURN_WINDOWS]
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>finmesh service quality</title>'
        f"<style>{STYLE}</style></head><body>",
        "<h1>finmesh service quality</h1>",
        f"<p>Window {html.escape(report.window)} ending {_when(report.at)}, from Prometheus at "
        f"<code>{html.escape(report.prometheus)}</code>. Counted from <code>rpc_server_call_duration_seconds</code>: "
        "a call is bad for availability when the server failed it, for a latency class when a successful call "
        "took longer than the class's threshold. Budget left: share of the window's error budget not spent "
        "(negative: overspent). Burn rate: how many times faster than the objective allows.</p>",
        "<h2>Availability</h2>",
        _table(
            ["service", "availability", "objective", "budget left", *burn_heads, "calls"],
            [[s.availability.service, *_objective_cells(s.availability)] for s in report.services],
        ),
        "<h2>Latency</h2>",
        _table(
            ["class", "threshold", "under it", "objective", "budget left", *burn_heads, "calls", "p50", "p95", "p99"],
            [
                [
                    c.name,
                    text.millis(c.threshold_seconds),
                    *_objective_cells(c),
                    *(text.millis(c.percentiles.get(q)) for q in text.QUANTILES),
                ]
                for s in report.services
                for c in s.latency
            ],
        ),
    ]
    for service in report.services:
        parts += [
            f'<h2 id="{html.escape(service.availability.service)}">{html.escape(service.availability.service)}</h2>',
            error_chart(report, service),
        ]
    parts.append(
        "<p>Percentiles come from histogram buckets (histogram_quantile), so they are as coarse as the "
        "buckets.</p></body></html>"
    )
    return "\n".join(parts)

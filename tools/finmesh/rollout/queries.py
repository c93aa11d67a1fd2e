"""The PromQL a rollout judges a color by: one source for `finmesh rollout`'s analysis and Argo's AnalysisTemplates.

Each query reads the series every finmesh server exports (docs/METRICS.md) for
one service and one color (`deployment_color`: blue/green under the finmesh
engine, the pod-template hash under Argo Rollouts) over one window, and returns
a single number, or nothing when that color served no call in the window (the
caller reads "no data" as inconclusive, never as healthy). Health checks are
left out: probes would dilute the error rate of real calls.

`Color` and `Window` are either values (`Selector("payments", "green", "2m")`)
or Argo's placeholders (`ARGO`), so the chart's templates are rendered from
the very strings the finmesh engine sends.
"""

from __future__ import annotations

from dataclasses import dataclass

from finmesh.slo.objectives import SERVER_FAULT_CODES

SERVER = "rpc_server_call_duration_seconds"
_NOT_HEALTH = 'rpc_service!="grpc.health.v1.Health"'
_FAULTS = "|".join(SERVER_FAULT_CODES)


@dataclass(frozen=True)
class Selector:
    """Which series: one service, one color, one range window (a PromQL duration such as "2m")."""

    service: str
    color: str
    window: str
    # The version the color runs now ("" = any). A color is reused rollout after rollout: without the version,
    # the window's first minute would judge the new version by the calls its color answered as the old one.
    version: str = ""

    def labels(self, *extra: str) -> str:
        version = [f'service_version="{self.version}"'] if self.version else []
        parts = [f'service_name="{self.service}"', f'deployment_color="{self.color}"', *version, _NOT_HEALTH, *extra]
        return "{" + ", ".join(parts) + "}"


# Argo Rollouts substitutes these in an AnalysisTemplate (args of the template).
ARGO = Selector("{{args.service}}", "{{args.color}}", "{{args.window}}")


def call_rate(s: Selector) -> str:
    """Calls per second the color answered (any status)."""
    return f"sum(rate({SERVER}_count{s.labels()}[{s.window}]))"


def error_rate(s: Selector) -> str:
    """Share of the color's calls that ended in a server fault (the availability SLO's definition)."""
    faults = f'rpc_response_status_code=~"{_FAULTS}"'
    return (
        f"(sum(rate({SERVER}_count{s.labels(faults)}[{s.window}])) or vector(0))"
        f" / sum(rate({SERVER}_count{s.labels()}[{s.window}]))"
    )


def latency_quantile(s: Selector, quantile: float) -> str:
    """The color's `quantile` of server call duration, in seconds, from the histogram buckets."""
    return f"histogram_quantile({quantile:g}, sum by (le) (rate({SERVER}_bucket{s.labels()}[{s.window}])))"


def ledger_violations(service: str, color: str) -> str:
    """Unbalanced currencies the color's own periodic ledger check found last (payments only)."""
    return f'max(finmesh_ledger_invariant_violations{{service_name="{service}", deployment_color="{color}"}})'


def ledger_check_age(service: str, color: str) -> str:
    """Seconds since the color's last ledger check (a check that never ran has no series)."""
    return (
        "time() - max(finmesh_ledger_invariant_last_check_timestamp_seconds"
        f'{{service_name="{service}", deployment_color="{color}"}})'
    )

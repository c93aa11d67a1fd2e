"""Prometheus' HTTP API (`/api/v1/query`, `/api/v1/query_range`): one small synchronous client for the tools.

`finmesh rollout`'s analysis and gates call it between steps, and `finmesh slo report` runs it in threads to
ask many queries at once. Synchronous on purpose: a rollout is a sequence of blocking steps, and urllib
keeps the body of an error answer, which is where Prometheus explains a rejected query (`bad_data`:
"parse error at char 5 ...").

Every failure is one exception, `PrometheusError`, whose text says what went wrong and where: the address
could not be reached, it did not answer in time, it is not Prometheus' API, or Prometheus refused the query
(its own error message, cut to a bound: a message can echo the whole query).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_TIMEOUT_SECONDS = 10.0
# Prometheus' error text echoes the query; kept to a length a log line or a terminal can take.
MAX_ERROR_CHARS = 300


class PrometheusError(Exception):
    """Prometheus could not be reached, or answered with an error: nothing was measured."""


def _bounded(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PrometheusClient:
    """Queries one Prometheus at `url` (e.g. http://127.0.0.1:9090), each within `timeout_seconds`."""

    def __init__(self, url: str, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.url = url.rstrip("/")
        self.timeout_seconds = timeout_seconds

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's samples ([{"metric": {labels}, "value": [t, "v"]}, ...]); a scalar result comes
        back as one sample without labels. `at`: the evaluation time (Unix seconds), default Prometheus' now."""
        params = {"query": expr}
        if at is not None:
            params["time"] = _ts(at)
        data = self._call("/api/v1/query", params)
        if data.get("resultType") == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"]) if data.get("resultType") == "vector" else []

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range query's series ([{"metric": {labels}, "values": [[t, "v"], ...]}, ...])."""
        params = {"query": expr, "start": _ts(start), "end": _ts(end), "step": _ts(step)}
        return list(self._call("/api/v1/query_range", params)["result"])

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The single number an aggregating query returns; None when it returns nothing (no series matched).
        NaN and ±Inf come back as floats: what they mean is the caller's to judge."""
        samples = self.query(expr, at)
        return number(samples[0]["value"][1]) if samples else None

    def _call(self, path: str, params: dict[str, str]) -> Any:
        # POSTed as a form: long selectors never meet a URL length limit (the API takes both).
        request = urllib.request.Request(
            self.url + path,
            data=urllib.parse.urlencode(params).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        where = f"Prometheus at {self.url}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as reply:
                status, raw = reply.status, reply.read()
        except urllib.error.HTTPError as answer:  # Prometheus answers a refused query with 400/422/503 + JSON
            status, raw = answer.code, answer.read()
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)  # urllib wraps a connect timeout in a URLError
            if isinstance(reason, TimeoutError):
                raise PrometheusError(f"{where} did not answer within {self.timeout_seconds:g} s") from None
            raise PrometheusError(f"{where} is unreachable ({_bounded(str(reason), 120)})") from None
        body = _json(raw)
        if not isinstance(body, dict):
            hint = " without a JSON body: is this Prometheus' address?" if status == 200 else ""
            raise PrometheusError(f"{where} answered HTTP {status} to {path}{hint}")
        if body.get("status") != "success":
            kind = body.get("errorType", "error")
            message = _bounded(str(body.get("error", "no message")))
            raise PrometheusError(f"{where} answered HTTP {status} ({kind}): {message}")
        return body.get("data", {})


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return None


def _ts(value: float) -> str:
    return f"{value:.3f}"


def number(text: str) -> float:
    """A sample's value: Prometheus writes "NaN", "+Inf", "-Inf" as float() reads them."""
    return float(text)


def finite(value: float | None) -> float | None:
    """The value when it is a real number; None for no data, NaN (0/0, a quantile of no calls) and ±Inf."""
    return value if value is not None and math.isfinite(value) else None

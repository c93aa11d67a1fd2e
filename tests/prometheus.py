"""A real Prometheus server for tests (Debian's `prometheus` package): config written by the test, data in a
temporary directory, listening on loopback only, stopped and removed by the test."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from finmesh.cli.mesh import free_port

T = TypeVar("T")


def binary(name: str) -> Path:
    """prometheus or promtool from PATH or /usr/bin; missing: fails under CI=true, else skips saying why."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        reason = f"{name} is not installed (Debian package 'prometheus'; tools/prometheus_tools.sh installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: the Prometheus tests must run)", pytrace=False)
        pytest.skip(reason)
    return Path(found)


class Prometheus:
    """One Prometheus scraping `jobs` ({job: [host:port, ...]}) every `interval`, evaluating `rules`, keeping
    its data in `data_dir` (where a test may backfill blocks with promtool before `start`) for `retention`."""

    def __init__(
        self,
        workdir: Path,
        jobs: dict[str, list[str]] | None = None,
        rules: dict[str, Any] | None = None,
        *,
        retention: str = "1d",
    ) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.jobs = jobs or {}
        self.rules = rules
        self.retention = retention
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, interval: str = "1s", timeout: float = 30.0) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets}]} for job, targets in self.jobs.items()
            ],
        }
        if self.rules is not None:
            rule_file = self.workdir / "rules.yaml"
            rule_file.write_text(yaml.safe_dump(self.rules, sort_keys=False), encoding="utf-8")
            config["rule_files"] = [str(rule_file)]
        config_file = self.workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        log = (self.workdir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(binary("prometheus")),
                f"--config.file={config_file}",
                f"--storage.tsdb.path={self.data_dir}",
                # Retention counts back from the newest block: backfilled data must outlive the clock.
                f"--storage.tsdb.retention.time={self.retention}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                # Its info lines name the Debian packager's e-mail, which the secret scan rightly flags.
                "--log.level=warn",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        self.wait(lambda: self._ready(), timeout, "Prometheus ready")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited {self.process.returncode}: {self.log()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant vector: [{"metric": {labels}, "value": [t, "v"]}, ...]."""
        return list(self.api("query", query=expr)["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def metric_names(self) -> set[str]:
        return set(self.api("label/__name__/values"))

    @staticmethod
    def wait(check: Callable[[], T], timeout: float, what: str, every: float = 0.5) -> T:
        """check()'s first truthy answer within `timeout` seconds; fails saying `what` was awaited."""
        deadline = time.monotonic() + timeout
        while True:
            answer = check()
            if answer:
                return answer
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:g} s")
            time.sleep(every)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.data_dir, ignore_errors=True)


@contextlib.contextmanager
def backfilled(workdir: Path, openmetrics: str) -> Iterator[str]:
    """A Prometheus holding exactly `openmetrics` (series with their own timestamps, promtool-backfilled, kept
    for 100 years) and scraping nothing: a test reads figures it knows. Yields its URL."""
    server = Prometheus(workdir, retention="100y")
    source = workdir / "backfill.om"
    workdir.mkdir(parents=True, exist_ok=True)
    source.write_text(openmetrics, encoding="utf-8")
    subprocess.run(
        [str(binary("promtool")), "tsdb", "create-blocks-from", "openmetrics", str(source), str(server.data_dir)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    server.start(interval="1m")
    try:
        yield server.url
    finally:
        server.stop()

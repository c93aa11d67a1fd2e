"""`finmesh load --compare a.json b.json`: the ratios of two results (b ÷ a), and what differs between their
machines and code. Hand-built results for exact arithmetic; a real run's result.json is compared in
test_load_harness.py."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from finmesh.cli.main import main

MACHINE = {
    "git_commit": "a" * 40,
    "git_dirty": False,
    "finmesh_version": "0.1.0",
    "host": "laptop",
    "cpu_count": 2,
    "cpus_usable": 2,
    "load_average": {"start": [0.5, 0.4, 0.3], "end": [0.9, 0.5, 0.3]},
    "python": "3.11.9",
    "grpcio": "1.85.1",
    "platform": "Linux",
}


def _result(throughput: float, p50: float, p90: float, p99: float, errors: int, calls: int = 1000) -> dict[str, Any]:
    return {
        "run": {"target": "local", "scenario": "payment"},
        "machine": copy.deepcopy(MACHINE),
        "calls": calls,
        "ok": calls - errors,
        "error_count": errors,
        "errors": {"UNAVAILABLE": errors} if errors else {},
        "throughput": throughput,
        "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "p99_9": p99 * 2, "max": p99 * 3, "mean": p50},
    }


def _compare(tmp_path: Path, capsys: Any, a: dict[str, Any], b: dict[str, Any]) -> str:
    paths = []
    for name, doc in (("a.json", a), ("b.json", b)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(doc), encoding="utf-8")
    capsys.readouterr()
    assert main(["load", "--compare", *map(str, paths)]) == 0
    return capsys.readouterr().out


def _row(printed: str, label: str) -> list[str]:
    line = next(line for line in printed.splitlines() if line.startswith(label + " "))
    return re.split(r"\s{2,}", line.strip())


def test_ratios_of_two_runs(tmp_path: Path, capsys: Any) -> None:
    a = _result(throughput=100.0, p50=10.0, p90=20.0, p99=40.0, errors=5)
    b = _result(throughput=150.0, p50=5.0, p90=30.0, p99=100.0, errors=2)
    b["machine"].update(host="server", cpu_count=16, cpus_usable=16, git_commit="b" * 40, git_dirty=True)
    a["ratio_to_baseline"] = {"throughput": 0.3, "latency_p50": 13.9, "latency_p99": 16.0}
    b["ratio_to_baseline"] = {"throughput": 0.6, "latency_p50": 4.0, "latency_p99": 8.0}
    printed = _compare(tmp_path, capsys, a, b)

    assert _row(printed, "throughput") == ["throughput", "100.0 ok/s", "150.0 ok/s", "1.50×"]
    assert _row(printed, "p50") == ["p50", "10.00 ms", "5.00 ms", "0.50×"]
    assert _row(printed, "p90") == ["p90", "20.00 ms", "30.00 ms", "1.50×"]
    assert _row(printed, "p99") == ["p99", "40.00 ms", "100.00 ms", "2.50×"]
    assert _row(printed, "errors") == ["errors", "5 of 1000", "2 of 1000", "0.40×"]
    assert "vs each run's own no-op baseline: throughput a 0.30× b 0.60×, latency_p50 a 13.90× b 4.00×" in printed
    assert "- hosts differ: a ran on laptop (2 cores), b on server (16 cores)" in printed
    assert f"- commits differ: a {'a' * 12}, b {'b' * 12} (dirty)" in printed


def test_same_machine_no_errors_and_a_busy_machine(tmp_path: Path, capsys: Any) -> None:
    a = _result(throughput=80.0, p50=10.0, p90=20.0, p99=40.0, errors=0)
    b = _result(throughput=40.0, p50=20.0, p90=40.0, p99=80.0, errors=3)
    b["machine"]["load_average"] = {"start": [1.5, 1.0, 1.0], "end": [12.25, 8.0, 4.0]}
    b["machine"]["grpcio"] = "1.86.0"
    printed = _compare(tmp_path, capsys, a, b)

    assert _row(printed, "throughput")[-1] == "0.50×" and _row(printed, "p99")[-1] == "2.00×"
    assert _row(printed, "errors") == ["errors", "0 of 1000", "3 of 1000", "—"]  # no ratio to nothing
    assert "- same host: laptop (2 cores)" in printed and f"- same commit {'a' * 12}" in printed
    assert "- grpcio differs: a 1.85.1, b 1.86.0" in printed
    assert "- b's machine was busy: load 12.25 at end on 2 cores" in printed
    assert "a's machine was busy" not in printed and "hosts differ" not in printed


def test_results_from_before_machine_facts_and_unreadable_files(tmp_path: Path, capsys: Any) -> None:
    a = _result(throughput=80.0, p50=10.0, p90=20.0, p99=40.0, errors=0)
    old = _result(throughput=80.0, p50=10.0, p90=20.0, p99=40.0, errors=0)
    del old["machine"]
    printed = _compare(tmp_path, capsys, a, old)
    assert _row(printed, "p50")[-1] == "1.00×"
    assert "- b: no machine facts recorded" in printed

    (tmp_path / "other.json").write_text('{"not": "a result"}', encoding="utf-8")
    assert main(["load", "--compare", str(tmp_path / "a.json"), str(tmp_path / "other.json")]) == 2
    assert main(["load", "--compare", str(tmp_path / "a.json"), str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "other.json: not a readable result.json" in err and "missing.json" in err

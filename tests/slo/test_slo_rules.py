"""The Prometheus rule file: generated from the objectives, valid for promtool, and behaving as the
unit tests in rules_tests/ say (input series in, alerts out, on Prometheus' own rule engine)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from finmesh.slo import objectives, rules
from finmesh.slo.cli import RULE_FILE, main

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / RULE_FILE
RULE_TESTS = sorted((Path(__file__).resolve().parent / "rules_tests").glob("*.yaml"))


def _promtool(promtool: Path, *args: str | Path) -> str:
    done = subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_committed_rule_file_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == rules.render(rules.rules()), (
        f"{RULE_FILE} is stale: run `finmesh slo rules --out {RULE_FILE}` and commit it"
    )


def test_cli_writes_the_rule_file(tmp_path: Path) -> None:
    out = tmp_path / "rules.yaml"
    assert main(["slo", "rules", "--out", str(out)]) == 0
    assert out.read_text() == COMMITTED.read_text()


def test_committed_rule_file_passes_promtool_check(promtool: Path) -> None:
    output = _promtool(promtool, "check", "rules", COMMITTED)
    assert "SUCCESS" in output


def test_time_scaled_rule_file_passes_promtool_check(promtool: Path, tmp_path: Path) -> None:
    scaled = tmp_path / "scaled.yaml"
    scaled.write_text(rules.render(rules.rules(1 / 120)))
    _promtool(promtool, "check", "rules", scaled)


@pytest.mark.parametrize("unit_tests", RULE_TESTS, ids=[p.stem for p in RULE_TESTS])
def test_rules_behave_as_the_promtool_unit_tests_say(promtool: Path, unit_tests: Path) -> None:
    output = _promtool(promtool, "test", "rules", unit_tests)
    assert "SUCCESS" in output


def test_time_scale_shrinks_windows_and_holds_but_keeps_names_and_four_scrapes() -> None:
    real, scaled = rules.rules(), rules.rules(1 / 120, min_window_seconds=4)
    assert list(rules.names(real)) == list(rules.names(scaled))
    ranges = {
        rules.seconds(r)
        for g in scaled["groups"]
        for rule in g["rules"]
        for r in re.findall(r"\[([0-9a-z]+)\]", rule["expr"])
    }
    # 5m / 120 would be 2.5 s: kept at four scrapes; 1h becomes 30 s, 3d 36 min.
    assert min(ranges) == 4
    assert {30, 36 * 60} <= ranges
    holds = {rule["alert"]: rule.get("for") for g in scaled["groups"] for rule in g["rules"] if "alert" in rule}
    assert holds["FinmeshOutboxEventsStuck"] == "5s"


def test_every_objective_and_pair_has_its_alert() -> None:
    alerts = [rule for g in rules.rules()["groups"] for rule in g["rules"] if "alert" in rule]
    burn = {
        (a["labels"]["slo"], a["labels"]["long_window"], a["labels"]["short_window"], a["labels"]["severity"])
        for a in alerts
        if a["alert"].endswith("BudgetBurn")
    }
    slos = [o.name for o in objectives.AVAILABILITY] + [o.name for o in objectives.LATENCY]
    pairs = [(p.long_window, p.short_window, p.severity) for p in objectives.BURN_RATE_ALERTS]
    assert burn == {(slo, *pair) for slo in slos for pair in pairs}
    for alert in alerts:
        assert alert["labels"]["severity"] in {"page", "ticket"}
        assert set(alert["annotations"]) == {"summary", "description", "runbook_url"}
        assert alert["annotations"]["runbook_url"].startswith("docs/RUNBOOK.md#")


def test_rule_file_is_a_plain_prometheus_rule_file() -> None:
    doc = yaml.safe_load(COMMITTED.read_text())
    assert list(doc) == ["groups"]


def test_latency_thresholds_are_bucket_bounds() -> None:
    from finmesh.platform.observability.metrics import LATENCY_BUCKETS

    for objective in objectives.LATENCY:
        assert objective.threshold_seconds in LATENCY_BUCKETS, objective.name


def test_every_alert_links_to_a_runbook_section() -> None:
    """Each alert's runbook_url names a section docs/RUNBOOK.md has: the person paged lands on what to do."""
    runbook = (REPO / "docs" / "RUNBOOK.md").read_text(encoding="utf-8")
    sections = {line[3:].strip() for line in runbook.splitlines() if line.startswith("## ")}
    alerts = [rule for group in rules.rules()["groups"] for rule in group["rules"] if "alert" in rule]
    missing = {
        rule["alert"]: rule["annotations"]["runbook_url"]
        for rule in alerts
        if rule["annotations"]["runbook_url"].partition("#")[2] not in sections
    }
    assert alerts and not missing, missing

"""Rules validation without I/O: the packaged file is valid, and every kind of mistake names its place."""

from __future__ import annotations

import json

import pytest
import yaml

from finmesh.risk.config import DEFAULT_RULES_FILE
from finmesh.risk.domain.rules import MAX_SOURCE_BYTES, RulesError, parse_rules
from tests.risk.harness import rules_dict, rules_yaml


def problems(source: str) -> dict[str, str]:
    with pytest.raises(RulesError) as refused:
        parse_rules(source)
    return {v.field: v.description for v in refused.value.violations}


def test_packaged_default_is_valid_and_versioned() -> None:
    """The default rules file shipped in the package passes validation and carries a version."""
    rules = parse_rules(DEFAULT_RULES_FILE.read_text(encoding="utf-8"))
    assert rules.version and rules.decision.review_score < rules.decision.decline_score


def test_json_is_accepted_too() -> None:
    """A JSON document is valid rules source as well as YAML."""
    assert parse_rules(json.dumps(rules_dict("json-1"))).version == "json-1"


@pytest.mark.parametrize(
    ("sections", "field", "words"),
    [
        ({"decision": {"review_score": 90, "decline_score": 80}}, "source.decision", "must not exceed"),
        ({"warning_levels": {"medium": 40, "high": 40, "critical": 95}}, "source.warning_levels", "rise strictly"),
        (
            {"amount": [{"code": "A_1", "score": 10, "at_least": {"XYZ": 5}}]},
            "source.amount[0].at_least",
            "unsupported currencies",
        ),
        (
            {"amount": [{"code": "A_1", "score": 10, "at_least": {"CNY": 50000.5}}]},
            "source.amount[0].at_least.CNY",
            "got 50000.5",
        ),
        ({"amount": [{"code": "A_1", "score": 101, "at_least": {"CNY": 5}}]}, "source.amount[0].score", "100"),
        (
            {"velocity": [{"code": "V_1", "subject": "user", "window_seconds": 60, "score": 5}]},
            "source.velocity[0]",
            "exactly one of max_count and max_amount",
        ),
        (
            {"geography": {"mismatch_score": 1, "high_risk_countries": [False], "high_risk_score": 1}},
            "source.geography.high_risk_countries[0]",
            "got False",
        ),
        ({"tiers": {"low": 0, "medium": 1, "high": 2, "unspecified": 0, "vip": 0}}, "source.tiers.vip", "Extra inputs"),
        (
            {
                "amount": [{"code": "SAME", "score": 1, "at_least": {"CNY": 1}}],
                "velocity": [{"code": "SAME", "subject": "ip", "window_seconds": 1, "max_count": 1, "score": 1}],
            },
            "source",
            "unique",
        ),
    ],
)
def test_each_mistake_is_refused_at_its_path(sections, field, words) -> None:
    """Out-of-order thresholds, floats for money, unknown currencies or keys, and YAML's NO-is-false are refused."""
    found = problems(rules_yaml("bad", **sections))
    assert field in found and words in found[field], found


def test_yaml_syntax_error_gives_the_line() -> None:
    """A syntax error points at the line and column."""
    found = problems("version: x\namount: [\n")
    assert "line 3" in found["source"]


def test_missing_sections_are_each_named() -> None:
    """Leaving sections out is an error per section, never a silently disabled rule."""
    partial = rules_dict("partial")
    del partial["velocity"], partial["aml"]
    assert {"source.velocity", "source.aml"} <= set(problems(yaml.safe_dump(partial)))


def test_oversized_and_non_mapping_sources_are_refused() -> None:
    """A huge document or a bare list is refused before validation."""
    assert "larger than" in problems("#" * (MAX_SOURCE_BYTES + 1))["source"]
    assert "mapping" in problems("- a\n- b\n")["source"]

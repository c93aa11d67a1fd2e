"""Risk settings (FINMESH_* environment variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from finmesh.platform.config import ServiceSettings

# The packaged rules, active until an operator activates others (and what `risk_rules_file` overrides).
DEFAULT_RULES_FILE = Path(__file__).parent / "default_rules.yaml"


class RiskSettings(ServiceSettings):
    # A rules file to watch (YAML or JSON). Empty: rules come from the
    # database (UpdateRules) or, on a fresh database, the packaged default.
    risk_rules_file: str = ""
    # How often each replica looks for a changed file or newer activation.
    risk_rules_poll_seconds: float = Field(default=1.0, gt=0)
    # How often unfinished emergency responses (freezes) are retried.
    risk_emergency_poll_seconds: float = Field(default=1.0, gt=0)
    # Assessment batches in flight at once on PostgreSQL (SQLite takes one writer at a time: always 1 there).
    # With one, this replica's assessments are decided strictly in turn. With more, a payer's payments still
    # wait for each other (the payer's row lock), but device and IP velocity of different payers may race
    # between batches, as they do between replicas.
    risk_writer_lanes: int = Field(default=1, ge=1, le=16)
    # Group commit under load: how long an assessment may wait for others to share its transaction, only
    # while they arrive more often than this (writer.py). Off by default since payments sends the checks that
    # wait together as one AssessPayments call: at 100 payments/s a 10 ms linger took the median from ~15 to
    # ~22 ms, for ~0.3 ms less of risk's CPU per payment at saturation.
    risk_writer_linger_ms: float = Field(default=0.0, ge=0, le=50)

    @classmethod
    def of(cls, settings: ServiceSettings) -> RiskSettings:
        """Risk's view of shared settings (callers that only know ServiceSettings, such as test meshes)."""
        if isinstance(settings, RiskSettings):
            return settings
        return cls(**settings.model_dump())

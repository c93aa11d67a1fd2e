"""Risk vocabulary shared by every rule: decisions, warning levels, tiers, reasons."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Decision(StrEnum):
    APPROVE = "APPROVE"
    REVIEW = "REVIEW"
    DECLINE = "DECLINE"


class WarningLevel(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        return _LEVEL_RANK[self]

    def at_least(self) -> tuple[WarningLevel, ...]:
        """This level and every more severe one (for "minimum level" filters)."""
        return tuple(level for level in WarningLevel if level.rank >= self.rank)


_LEVEL_RANK = {WarningLevel.LOW: 1, WarningLevel.MEDIUM: 2, WarningLevel.HIGH: 3, WarningLevel.CRITICAL: 4}


class Tier(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"


class Subject(StrEnum):
    """Whose activity a velocity rule counts."""

    USER = "user"
    DEVICE = "device"
    IP = "ip"


class BlockKind(StrEnum):
    USER = "USER"
    DEVICE = "DEVICE"
    IP = "IP"
    ACCOUNT = "ACCOUNT"


class AmlKind(StrEnum):
    LARGE_VALUE = "LARGE_VALUE"
    STRUCTURING = "STRUCTURING"


@dataclass(frozen=True)
class Reason:
    """One rule that contributed to a verdict: a stable machine-readable code and its points."""

    code: str
    score: int
    detail: str

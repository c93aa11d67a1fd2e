"""The audit chain: each record's hash covers its content and the previous record's hash.

Changing, removing or reordering any record changes every later hash, so a
walk from the first record finds the first one that no longer chains.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class AuditRecord:
    sequence: int
    recorded_at: str  # ISO 8601 text, hashed as stored (no timezone round trip can change it)
    kind: str
    payload: str  # canonical JSON
    prev_hash: str
    hash: str


def canonical(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, sequence: int, recorded_at: str, kind: str, payload: str) -> str:
    body = "\x1f".join((prev_hash, str(sequence), recorded_at, kind, payload))
    return hashlib.sha256(body.encode()).hexdigest()


def append(prev_hash: str, sequence: int, recorded_at: str, kind: str, payload: dict[str, Any]) -> AuditRecord:
    text = canonical(payload)
    return AuditRecord(
        sequence, recorded_at, kind, text, prev_hash, chain_hash(prev_hash, sequence, recorded_at, kind, text)
    )


@dataclass
class Verification:
    rows_checked: int = 0
    first_broken_sequence: int = 0
    last_sequence: int = 0
    last_hash: str = GENESIS_HASH

    @property
    def intact(self) -> bool:
        return self.first_broken_sequence == 0


def verify(records: Iterable[AuditRecord], state: Verification | None = None) -> Verification:
    """Walk records in sequence order (resumable across pages through `state`)."""
    state = state or Verification()
    for record in records:
        state.rows_checked += 1
        if state.first_broken_sequence:
            continue
        expected = state.last_sequence + 1
        if record.sequence != expected:
            state.first_broken_sequence = expected  # a record is missing (or was renumbered)
            continue
        recomputed = chain_hash(state.last_hash, record.sequence, record.recorded_at, record.kind, record.payload)
        if record.prev_hash != state.last_hash or record.hash != recomputed:
            state.first_broken_sequence = record.sequence
            continue
        state.last_sequence, state.last_hash = record.sequence, record.hash
    return state


def verify_head(state: Verification, head_sequence: int, head_hash: str) -> Verification:
    """The head row remembers the newest record: a log cut short at the end is broken too."""
    if not state.first_broken_sequence and (head_sequence, head_hash) != (state.last_sequence, state.last_hash):
        state.first_broken_sequence = state.last_sequence + 1
    return state

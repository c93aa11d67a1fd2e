"""Renders spans from the local JSONL span files as a tree: service, span, duration."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any


def load_spans(span_dir: Path) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = []
    for path in sorted(span_dir.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            spans.extend(json.loads(line) for line in f if line.strip())
    return spans


def latest_trace_id(spans: list[dict[str, Any]]) -> str | None:
    roots = [s for s in spans if s["parent_span_id"] is None]
    return max(roots, key=lambda s: s["start_ns"])["trace_id"] if roots else None


def render_tree(spans: list[dict[str, Any]], trace_id: str) -> str:
    mine = [s for s in spans if s["trace_id"] == trace_id]
    ids = {s["span_id"] for s in mine}
    children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for span in mine:
        parent = span["parent_span_id"] if span["parent_span_id"] in ids else None
        children[parent].append(span)
    lines = [f"trace {trace_id} ({len(mine)} spans)"]

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children[parent], key=lambda s: s["start_ns"]):
            ms = (span["end_ns"] - span["start_ns"]) / 1e6
            status = "" if span["status"] != "ERROR" else "  [ERROR]"
            lines.append(f"{'  ' * depth}{span['service']:<9} {span['name']}  {ms:.1f} ms{status}")
            walk(span["span_id"], depth + 1)

    walk(None, 0)
    return "\n".join(lines)

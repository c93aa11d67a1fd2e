"""`finmesh load --compare a.json b.json`: two runs' figures side by side and b ÷ a, with what makes the ratios
hard to read (different hosts, core counts or commits, a busy machine) said up front.

Pure: takes the two result documents (finmesh.load.run.result_document), returns text.
"""

from __future__ import annotations

from typing import Any

# (label, how to read a figure from a result document, unit); latencies in ms.
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("throughput", "throughput", "ok/s"),
    ("p50", "p50", "ms"),
    ("p90", "p90", "ms"),
    ("p99", "p99", "ms"),
    ("errors", "error_count", ""),
)


def figure(doc: dict[str, Any], key: str) -> float:
    if key in ("throughput", "error_count"):
        return float(doc[key])
    return float(doc["latency_ms"][key])


def ratio(a: float, b: float) -> float | None:
    """b ÷ a; None when a is 0 (no ratio of nothing: the values themselves say it)."""
    return round(b / a, 3) if a else None


def ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float | None]:
    """b ÷ a for each figure: throughput >1 is faster, latencies >1 slower, errors >1 more errors."""
    return {label: ratio(figure(a, key), figure(b, key)) for label, key, _ in FIGURES}


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Whether the runs' hosts and commits are the same, and whatever else differs, one sentence each."""
    ma, mb = a.get("machine"), b.get("machine")
    if not ma or not mb:
        missing = [name for name, m in (("a", ma), ("b", mb)) if not m]
        return [
            f"{' and '.join(missing)}: no machine facts recorded (a result from before they were): cannot tell "
            "whether hosts or commits differ"
        ]
    if ma.get("host") != mb.get("host") or ma.get("cpus_usable") != mb.get("cpus_usable"):
        notes = [
            f"hosts differ: a ran on {ma.get('host')} ({_cores(ma)}), b on {mb.get('host')} ({_cores(mb)}): "
            "the ratios compare machines as much as code"
        ]
    else:
        notes = [f"same host: {ma.get('host')} ({_cores(ma)})"]
    if ma.get("git_commit") != mb.get("git_commit"):
        notes.append(f"commits differ: a {_commit(ma)}, b {_commit(mb)}")
    elif ma.get("git_dirty") or mb.get("git_dirty"):
        notes.append(f"same commit {_commit(ma)}, with uncommitted changes in {_dirty(ma, mb)}: they may differ")
    else:
        notes.append(f"same commit {_commit(ma)}")
    for name, key in (("Python", "python"), ("grpcio", "grpcio"), ("finmesh", "finmesh_version")):
        if ma.get(key) != mb.get(key):
            notes.append(f"{name} differs: a {ma.get(key)}, b {mb.get(key)}")
    for side, m in (("a", ma), ("b", mb)):
        busy = _busy(m)
        if busy:
            notes.append(f"{side}'s machine was busy: {busy}")
    return notes


def _cores(machine: dict[str, Any]) -> str:
    usable, total = machine.get("cpus_usable"), machine.get("cpu_count")
    return f"{usable} of {total} cores" if usable and usable != total else f"{total} cores"


def _commit(machine: dict[str, Any]) -> str:
    commit = machine.get("git_commit")
    if not commit:
        return "(unknown commit)"
    return commit[:12] + (" (dirty)" if machine.get("git_dirty") else "")


def _dirty(ma: dict[str, Any], mb: dict[str, Any]) -> str:
    return " and ".join(side for side, m in (("a", ma), ("b", mb)) if m.get("git_dirty"))


def _busy(machine: dict[str, Any]) -> str:
    """A load average (1 min) above the usable cores at start or end, as text; "" when not."""
    cores = machine.get("cpus_usable") or machine.get("cpu_count") or 0
    loads = machine.get("load_average") or {}
    seen = [(when, loads.get(when)) for when in ("start", "end")]
    over = [f"load {values[0]:g} at {when}" for when, values in seen if values and cores and values[0] > cores]
    return f"{', '.join(over)} on {cores} cores" if over else ""


def _value(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "ok/s":
        return f"{value:.1f} ok/s"
    return f"{value:g}"


def render(a: dict[str, Any], b: dict[str, Any], name_a: str = "a", name_b: str = "b") -> str:
    """The comparison as text: a line per figure (a, b, b ÷ a), then what differs between the runs."""
    rows = [("", f"a: {name_a}", f"b: {name_b}", "b ÷ a")]
    for (label, key, unit), (_, r) in zip(FIGURES, ratios(a, b).items(), strict=True):
        va, vb = figure(a, key), figure(b, key)
        if label == "errors":
            va_text, vb_text = f"{va:g} of {a['calls']}", f"{vb:g} of {b['calls']}"
        else:
            va_text, vb_text = _value(va, unit), _value(vb, unit)
        rows.append((label, va_text, vb_text, "—" if r is None else f"{r:.2f}×"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    ra, rb = a.get("ratio_to_baseline"), b.get("ratio_to_baseline")
    if ra and rb:
        # Each run ÷ its own no-op baseline: the figure that holds up across machines.
        shared = [k for k in ("throughput", "latency_p50", "latency_p99") if k in ra and k in rb]
        lines.append(
            "vs each run's own no-op baseline: " + ", ".join(f"{k} a {ra[k]:.2f}× b {rb[k]:.2f}×" for k in shared)
        )
    lines += [f"- {note}" for note in differences(a, b)]
    return "\n".join(lines)

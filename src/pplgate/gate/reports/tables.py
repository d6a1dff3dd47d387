"""Status words and marks, the terminal table (with the per-phase seconds, and the KLD/top-1 columns when a
record has a reference), JUnit properties, the verdict line."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pplgate.gate.detect import DetectableShift
from pplgate.gate.record import FAILING, GateRecord, Status
from pplgate.gate.reports import kld as report_kld
from pplgate.gate.store import NLL_DECIMALS

Record = GateRecord | Mapping[str, Any]


# Status-keyed tables: a str-valued Status hashes and compares like its value, so plain-string
# statuses (records read back from JSON) look up the same entries.
STATUS_MARK = {
    Status.PASS: "PASS",
    Status.FAIL: "FAIL",
    Status.IMPROVED: "IMPROVED",
    Status.DRIFT: "DRIFT",
    Status.MISSING: "MISSING",
    Status.INCONSISTENT: "INCONSISTENT",
    Status.CREATED: "CREATED",
    Status.UPDATED: "UPDATED",
    Status.NOT_WRITTEN: "NOT WRITTEN",
    Status.SKIPPED: "SKIP",
    Status.ERROR: "ERROR",
}
MD_MARK = {
    Status.PASS: "✅",
    Status.FAIL: "❌",
    Status.IMPROVED: "❗",
    Status.DRIFT: "⚠️",
    Status.MISSING: "❓",
    Status.INCONSISTENT: "🧩",
    Status.CREATED: "🆕",
    Status.UPDATED: "🔄",
    Status.NOT_WRITTEN: "🚫",
    Status.SKIPPED: "⏭️",
    Status.ERROR: "💥",
}
# what a status means in a sentence (verdict line, section titles), in the verdict line's order
STATUS_WORDS = {
    Status.FAIL: ("regression", "regressions"),
    Status.IMPROVED: ("improvement outside tolerance", "improvements outside tolerance"),
    Status.DRIFT: ("protocol drift", "protocol drifts"),
    Status.MISSING: ("missing baseline", "missing baselines"),
    Status.INCONSISTENT: ("inconsistent baseline", "inconsistent baselines"),
    Status.ERROR: ("error", "errors"),
    Status.NOT_WRITTEN: ("update not written", "updates not written"),
    Status.PASS: ("passed", "passed"),
    Status.CREATED: ("created", "created"),
    Status.UPDATED: ("updated", "updated"),
    Status.SKIPPED: ("skipped", "skipped"),
}
PLOTTED = (Status.FAIL, Status.IMPROVED, Status.DRIFT, Status.INCONSISTENT, Status.UPDATED, Status.NOT_WRITTEN)

# Baselines store window NLLs rounded to NLL_DECIMALS: a per-window |dNLL| up to this step is storage
# rounding, not a change. Same threshold as ``paired_stats``'s ``eps`` (so the counts agree).
ROUNDING_STEP = 10.0**-NLL_DECIMALS


def _f(value: Any, fmt: str = "{:.4f}") -> str:
    return "-" if value is None else fmt.format(value)


def as_dict(rec: Record) -> dict[str, Any]:
    """A record as the reports read it: a :class:`GateRecord`'s :meth:`~GateRecord.to_dict`, or a copy."""
    return rec.to_dict() if isinstance(rec, GateRecord) else dict(rec)


def junit_properties(rec: Record) -> list[tuple[str, Any]]:
    """``record_property``-style pairs for the JUnit XML of one gate test."""
    rec = as_dict(rec)
    return [
        ("pplgate_ppl", _f(rec.get("ppl"), "{:.6f}")),
        ("pplgate_baseline", _f(rec.get("baseline"), "{:.6f}")),
        ("pplgate_delta", _f(rec.get("delta"), "{:+.6f}")),
        ("pplgate_tolerance", rec.get("tolerance", "")),
        ("pplgate_status", rec.get("status", "")),
        *report_kld.junit_properties(rec),
    ]


# the phases a record carries (pplgate.measure.PHASES), in the order the "phases" cell shows them
PHASE_ORDER = ("load_s", "prepare_s", "tokenize_s", "evaluate_s")


def phases_cell(rec: Mapping[str, Any]) -> str:
    """``12.6+0.3+1.0+3.2``: load + prepare + tokenize + evaluate seconds (``-`` when not recorded)."""
    phases = rec.get("phases")
    if not isinstance(phases, Mapping) or not phases:
        return "-"
    return "+".join(f"{float(phases.get(k) or 0):.1f}" for k in PHASE_ORDER)


def detects_cell(rec: Mapping[str, Any]) -> str:
    """``>=0.012``: the smallest PPL shift the record's windows resolve; ``n/a`` with one window, ``-`` unknown."""
    d = rec.get("detectable")
    return DetectableShift.from_dict(d).cell() if isinstance(d, Mapping) else "-"


def _row(rec: dict[str, Any]) -> list[str]:
    phases = rec.get("phases")
    if isinstance(phases, Mapping) and phases:
        time_s = sum(float(v or 0) for v in phases.values())  # every phase, the float model's load included
    else:
        time_s = (rec.get("wall_time_s") or 0) + (rec.get("prepare_time_s") or 0)
    return [
        rec.get("model", "?"),
        f"{rec.get('profile', '?')}-{rec.get('variant', '?')}" + (" (partial)" if rec.get("partial") else ""),
        _f(rec.get("ppl")),
        _f(rec.get("baseline")),
        _f(rec.get("delta"), "{:+.4f}"),
        rec.get("tolerance", ""),
        detects_cell(rec),
        STATUS_MARK.get(rec.get("status", ""), str(rec.get("status"))),
        f"{time_s:.1f}s" if rec.get("wall_time_s") is not None else "-",
        phases_cell(rec),
        _f(rec.get("tokens_per_s"), "{:.0f}"),
        rec.get("origin") or "-",
    ]


# "load+prep+tok+eval": the seconds of each phase (pplgate.measure.PHASES), so a slow phase shows
HEADER = [
    "model",
    "variant",
    "ppl",
    "baseline",
    "delta",
    "tolerance",
    "detects",  # the smallest PPL shift the entry's windows resolve (pplgate.gate.detect)
    "status",
    "time",
    "load+prep+tok+eval",
    "tok/s",
    "origin",
]


def terminal_table(records: Sequence[Record]) -> list[str]:
    recs = [as_dict(r) for r in records]
    header, body = report_kld.with_columns(HEADER, [_row(r) for r in recs], recs)  # + kld/top1 with a reference
    rows = [header, *body]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def relpath(path: str | Path, rootdir: str | Path | None) -> str:
    """``path`` relative to ``rootdir`` (unchanged without a rootdir or on another drive)."""
    if rootdir is None or not path:
        return str(path)
    try:
        return os.path.relpath(path, rootdir)
    except ValueError:
        return str(path)


def update_table(rows: Sequence[dict[str, Any]], rootdir: str | Path | None = None) -> list[str]:
    out = []
    for r in rows:
        path = relpath(r.get("file", ""), rootdir)
        old, new = r.get("old"), r.get("new")
        delta = f"  ({new - old:+.6f})" if old is not None and new is not None else ""
        what = "" if r.get("applied", True) else "  [entry no longer in the file: skipped]"
        out.append(
            f"{path} :: {r['profile']}/{r['variant']}: "
            f"{'(new)' if old is None else f'{old:.6f}'} -> {new:.6f}{delta}{what}"
        )
    return out


def verdict(records: Sequence[Record], blocked: str | None = None) -> str:
    """``**pplgate: FAILED** — 1 regression, 2 passed`` (counts in :data:`STATUS_WORDS` order)."""
    records = [as_dict(r) for r in records]
    counts = {s: sum(r.get("status") == s for r in records) for s in STATUS_WORDS}
    other = len(records) - sum(counts.values())
    parts = [f"{n} {STATUS_WORDS[s][n != 1]}" for s, n in counts.items() if n]
    if other:
        parts.append(f"{other} other")
    failed = blocked or any(counts[s] for s in FAILING) or other
    return f"**pplgate: {'FAILED' if failed else 'PASSED'}** — {', '.join(parts) or 'no gate tests'}"

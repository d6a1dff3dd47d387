"""Gate reports: JUnit properties, terminal tables, JSON, Markdown (PR comment / step summary), PNG plots.

Every function takes :class:`~pplgate.gate.verdict.GateRecord` objects or their dicts
(:meth:`~pplgate.gate.verdict.GateRecord.to_dict`, the form that travels from pytest-xdist workers to
the controller), so a distributed run is reported by the controller exactly like a single-process run.
matplotlib is imported only when a PNG is drawn.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pplgate.gate import report_kld
from pplgate.gate.record import FAILING, GateRecord, Status
from pplgate.gate.stats import PairedStats
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
MATPLOTLIB_MISSING = (
    "PNG report skipped: matplotlib is not installed (pip install matplotlib, or pip install -e '.[report]')"
)


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


def _row(rec: dict[str, Any]) -> list[str]:
    time_s = (rec.get("wall_time_s") or 0) + (rec.get("prepare_time_s") or 0)
    return [
        rec.get("model", "?"),
        f"{rec.get('profile', '?')}-{rec.get('variant', '?')}" + (" (partial)" if rec.get("partial") else ""),
        _f(rec.get("ppl")),
        _f(rec.get("baseline")),
        _f(rec.get("delta"), "{:+.4f}"),
        rec.get("tolerance", ""),
        STATUS_MARK.get(rec.get("status", ""), str(rec.get("status"))),
        f"{time_s:.1f}s" if rec.get("wall_time_s") is not None else "-",
        rec.get("origin") or "-",
    ]


HEADER = ["model", "variant", "ppl", "baseline", "delta", "tolerance", "status", "time", "origin"]


def terminal_table(records: Sequence[Record]) -> list[str]:
    recs = [as_dict(r) for r in records]
    header, body = report_kld.with_columns(HEADER, [_row(r) for r in recs], recs)
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


def window_deltas(rec: Mapping[str, Any]) -> list[float] | None:
    """Per-window NLL deltas (current - recorded); None without two equally long lists."""
    cur, base = rec.get("window_nlls"), rec.get("baseline_window_nlls")
    if not cur or not base or len(cur) != len(base):
        return None
    return [float(a) - float(b) for a, b in zip(cur, base, strict=True)]


def classify_deltas(deltas: Sequence[float], step: float = ROUNDING_STEP) -> list[int]:
    """+1 worse, -1 better, 0 within the storage rounding step (``paired_stats`` counts the same way)."""
    return [1 if d > step else -1 if d < -step else 0 for d in deltas]


def _pct(rec: Mapping[str, Any]) -> str:
    rel = rec.get("rel_delta")
    return "" if rel is None else f" ({rel:+.4%})"


def _paired_text(p: Mapping[str, Any]) -> str:
    """The terminal's paired-statistics sentence (with its noise-or-shift verdict) from a record's dict."""
    return PairedStats.from_dict(p).describe()


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _section(rec: dict[str, Any], plot: str | None) -> list[str]:
    """The Markdown lines that tell a reviewer what happened to one entry and what to do."""
    status = rec.get("status", "")
    title = STATUS_WORDS.get(status, (status, status))[0]
    lines = ["", f"#### {MD_MARK.get(status, '')} `{rec.get('nodeid', '')}`: {title}", ""]
    if rec.get("ppl") is not None and rec.get("baseline") is not None:
        lines.append(
            f"- measured **{rec['ppl']:.6f}** vs recorded {rec['baseline']:.6f}: "
            f"Δ {rec['ppl'] - rec['baseline']:+.6f}{_pct(rec)}" + (" (partial)" if rec.get("partial") else "")
        )
    elif rec.get("ppl") is not None:
        lines.append(f"- measured **{rec['ppl']:.6f}**, nothing recorded")
    for rule in rec.get("rules") or []:
        lines.append(f"- `{rule['text']}`")
    for k, old, new in rec.get("drift") or []:
        lines.append(f"- protocol drift `{k}`: `{old}` → `{new}`")
    if rec.get("paired"):
        lines.append(f"- {_paired_text(rec['paired'])}")
    lines += report_kld.section_lines(rec)
    for problem in rec.get("inconsistent") or []:
        lines.append(f"- ⚠️ {problem}: was the baseline file edited by hand?")
    if rec.get("error"):
        lines += ["- error:", "", "```", str(rec["error"]).rstrip(), "```"]
    if rec.get("not_written"):
        lines.append(f"- measured but **not written**: {rec['not_written']}")
    if plot:
        lines.append(f"- {plot}")
    if rec.get("rerun"):
        lines += ["- if the change is intended, re-record with:", "", "```", rec["rerun"], "```"]
    return lines


def markdown(
    records: Sequence[Record],
    update_rows: Sequence[dict] = (),
    blocked: str | None = None,
    *,
    rootdir: str | Path | None = None,
    plots: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The report for a PR comment / step summary: verdict, table, one section per entry to act on.

    ``plots`` maps a nodeid to the line about its per-window plot (a link, or why there is none).
    """
    plots = plots or {}
    records = [as_dict(r) for r in records]
    lines = [verdict(records, blocked), "", "### pplgate: WikiText-2 perplexity gate", ""]
    header, rows = report_kld.with_columns(HEADER, [_row(r) for r in records], records)
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for rec, row in zip(records, rows, strict=True):
        row[4] += _pct(rec) if rec.get("delta") is not None else ""
        row[6] = f"{MD_MARK.get(rec.get('status', ''), '')} {row[6]}"
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    for rec in records:
        if rec.get("status") in FAILING or rec.get("nodeid") in plots:
            lines += _section(rec, plots.get(rec.get("nodeid", "")))
    skipped = [r for r in records if r.get("status") == Status.SKIPPED]
    if skipped:
        lines += ["", "**Skipped**", ""]
        lines += [f"- `{r.get('nodeid', '')}`: {r.get('skip_reason') or 'no reason given'}" for r in skipped]
    if update_rows:
        lines += ["", "**Baseline updates**", ""] + [f"- {x}" for x in update_table(update_rows, rootdir)]
    if blocked:
        lines += ["", f"**Baseline updates not written:** {blocked}"]
    if notes:
        lines += [""] + [f"_{n}_" for n in notes]
    return "\n".join(lines) + "\n"


def _slug(text: str, limit: int = 120) -> str:
    """A file name for ``text`` (a test id): at most ``limit`` characters, a hash keeps long ones apart."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")
    if len(slug) <= limit:
        return slug
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return f"{slug[: limit - 13]}-{digest}"


def _pyplot() -> tuple[Any, str | None]:
    """``(matplotlib.pyplot, None)``, or ``(None, why)`` when it cannot be imported."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return None, MATPLOTLIB_MISSING
    except Exception as exc:  # a broken install: say so instead of failing the session
        return None, f"PNG report skipped: matplotlib failed to load ({type(exc).__name__}: {exc})"
    return plt, None


def plot_window_deltas(rec: Record, path: Path, step: float = ROUNDING_STEP) -> Path | None:
    """PNG of per-window NLL deltas (current - recorded) for one variant.

    Bars within ``±step`` (storage rounding) are grey, worse red, better blue; the band is drawn and
    labelled. None without data, without matplotlib, or when every |Δ| is within the step (no plot).
    """
    rec = as_dict(rec)
    deltas = window_deltas(rec)
    if deltas is None:
        return None
    kinds = classify_deltas(deltas, step)
    if not any(kinds):
        return None
    plt, _ = _pyplot()
    if plt is None:
        return None
    colour = {1: "#c0392b", -1: "#2e86c1", 0: "#95a5a6"}
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    ax.bar(range(len(deltas)), deltas, color=[colour[k] for k in kinds])
    ax.axhspan(-step, step, color="#d5d8dc", alpha=0.6, label=f"±{step:g}: storage rounding (noise)")
    ax.axhline(0, color="black", linewidth=0.8)
    mean = (rec.get("paired") or {}).get("mean")
    if mean is not None:
        ax.axhline(mean, color="#7f8c8d", linestyle="--", linewidth=0.8, label=f"mean {mean:+.2e}")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("window")
    ax.set_ylabel("ΔNLL (nats)")
    n_worse, n_better = kinds.count(1), kinds.count(-1)
    ax.set_title(
        f"{rec.get('nodeid', '')} [{STATUS_MARK.get(rec.get('status', ''), rec.get('status'))}]\n"
        f"{n_worse}/{len(kinds)} windows worse, {n_better} better, "
        f"{kinds.count(0)} within ±{step:g} (rounding)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass
class WrittenReports:
    """What :func:`write_reports` wrote, and the notes (e.g. no matplotlib) to show once."""

    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float as the string ``inf``/``-inf``/``nan`` (strict JSON has none)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, Mapping):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _relative_paths(items: Sequence[dict[str, Any]], rootdir: str | Path | None) -> list[dict[str, Any]]:
    return [{**d, "file": relpath(d["file"], rootdir)} if d.get("file") else dict(d) for d in items]


def write_reports(
    report_dir: str | Path | None,
    records: Sequence[Record],
    update_rows: Sequence[dict] = (),
    blocked: str | None = None,
    *,
    rootdir: str | Path | None = None,
) -> WrittenReports:
    """JSON + Markdown (+ PNGs for failing/updated variants) into ``report_dir``; Markdown also to
    ``$GITHUB_STEP_SUMMARY`` when set. ``file`` paths are written relative to ``rootdir``."""
    records = [as_dict(r) for r in records]
    out = WrittenReports()
    plots: dict[str, str] = {}
    if report_dir:
        d = Path(report_dir)
        d.mkdir(parents=True, exist_ok=True)
        for rec in records:
            deltas = window_deltas(rec) if rec.get("status") in PLOTTED else None
            if deltas is None:
                continue
            nodeid = rec.get("nodeid", "variant")
            if not any(classify_deltas(deltas)):
                if rec.get("status") in FAILING:
                    plots[nodeid] = f"per-window ΔNLL: every |Δ| ≤ {ROUNDING_STEP:g}, the storage rounding (no plot)"
                continue
            why_not = _pyplot()[1]
            if why_not is not None:
                if why_not not in out.notes:
                    out.notes.append(why_not)
                continue
            png = plot_window_deltas(rec, d / f"{_slug(nodeid)}.png")
            if png is not None:
                out.paths.append(png)
                plots[nodeid] = f"per-window ΔNLL plot: [{png.name}]({png.name})"
        report_kld.add_plots(d, records, PLOTTED, plots, out.paths, _pyplot, _slug)
    rel_records = _relative_paths(records, rootdir)
    rel_rows = _relative_paths(update_rows, rootdir)
    md = markdown(rel_records, rel_rows, blocked, plots=plots, notes=out.notes)
    if report_dir:
        d = Path(report_dir)
        payload = {"records": rel_records, "updates": rel_rows, "updates_blocked": blocked, "notes": out.notes}
        text = json.dumps(_json_safe(payload), indent=2, default=str, allow_nan=False)
        (d / "pplgate-results.json").write_text(text + "\n", encoding="utf-8")
        (d / "pplgate-summary.md").write_text(md, encoding="utf-8")
        out.paths[:0] = [d / "pplgate-results.json", d / "pplgate-summary.md"]
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(md + "\n")
    return out

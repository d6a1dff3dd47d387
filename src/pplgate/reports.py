"""Gate reports: JUnit properties, terminal tables, JSON, Markdown (PR comment / step summary), PNG plots.

Every function works on the plain result records the plugin builds per test (dicts that
travel from pytest-xdist workers to the controller on the test report), so a distributed run
is reported by the controller exactly like a single-process run.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STATUS_MARK = {
    "pass": "PASS",
    "fail": "FAIL",
    "drift": "DRIFT",
    "missing": "MISSING",
    "created": "CREATED",
    "updated": "UPDATED",
    "skipped": "SKIP",
    "error": "ERROR",
}
MD_MARK = {
    "pass": "✅",
    "fail": "❌",
    "drift": "⚠️",
    "missing": "❓",
    "created": "🆕",
    "updated": "🔄",
    "skipped": "⏭️",
    "error": "💥",
}


def _f(value: Any, fmt: str = "{:.4f}") -> str:
    return "-" if value is None else fmt.format(value)


def junit_properties(rec: dict[str, Any]) -> list[tuple[str, Any]]:
    """``record_property``-style pairs for the JUnit XML of one gate test."""
    return [
        ("pplgate_ppl", _f(rec.get("ppl"), "{:.6f}")),
        ("pplgate_baseline", _f(rec.get("baseline"), "{:.6f}")),
        ("pplgate_delta", _f(rec.get("delta"), "{:+.6f}")),
        ("pplgate_tolerance", rec.get("tolerance", "")),
        ("pplgate_status", rec.get("status", "")),
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


def terminal_table(records: Sequence[dict[str, Any]]) -> list[str]:
    rows = [HEADER] + [_row(r) for r in records]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def update_table(rows: Sequence[dict[str, Any]], rootdir: str | Path | None = None) -> list[str]:
    out = []
    for r in rows:
        path = r.get("file", "")
        if rootdir is not None:
            try:
                path = os.path.relpath(path, rootdir)
            except ValueError:
                pass
        old, new = r.get("old"), r.get("new")
        delta = f"  ({new - old:+.6f})" if old is not None and new is not None else ""
        what = "" if r.get("applied", True) else "  [entry no longer in the file: skipped]"
        out.append(
            f"{path} :: {r['profile']}/{r['variant']}: "
            f"{'(new)' if old is None else f'{old:.6f}'} -> {new:.6f}{delta}{what}"
        )
    return out


def markdown(records: Sequence[dict[str, Any]], update_rows: Sequence[dict] = (), blocked: str | None = None) -> str:
    lines = ["### pplgate: WikiText-2 perplexity gate", ""]
    lines.append("| " + " | ".join(HEADER) + " |")
    lines.append("|" + "---|" * len(HEADER))
    for rec in records:
        row = _row(rec)
        row[6] = f"{MD_MARK.get(rec.get('status', ''), '')} {row[6]}"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    failing = [r for r in records if r.get("status") in ("fail", "drift", "missing")]
    for rec in failing:
        lines += ["", f"<details><summary>{rec.get('nodeid', '')}: {rec.get('status')}</summary>", ""]
        for rule in rec.get("rules") or []:
            lines.append(f"- `{rule['text']}`")
        for k, old, new in rec.get("drift") or []:
            lines.append(f"- protocol drift `{k}`: `{old}` → `{new}`")
        p = rec.get("paired")
        if p:
            ci = "n/a" if p.get("ci_low") is None else f"[{p['ci_low']:+.6f}, {p['ci_high']:+.6f}]"
            lines.append(
                f"- paired ΔNLL mean {p['mean']:+.6f} nats, 95% CI {ci}, {p['n_worse']}/{p['n']} windows worse"
            )
        lines += ["", "</details>"]
    if update_rows:
        lines += ["", "**Baseline updates**", ""] + [f"- {x}" for x in update_table(update_rows)]
    if blocked:
        lines += ["", f"**Baseline updates not written:** {blocked}"]
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def plot_window_deltas(rec: dict[str, Any], path: Path) -> Path | None:
    """PNG of per-window NLL deltas (current - recorded) for one variant; None without data/matplotlib."""
    cur, base = rec.get("window_nlls"), rec.get("baseline_window_nlls")
    if not cur or not base or len(cur) != len(base):
        return None
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except Exception:
        return None
    deltas = [a - b for a, b in zip(cur, base, strict=True)]
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    ax.bar(range(len(deltas)), deltas, color=["#c0392b" if d > 0 else "#2e86c1" for d in deltas])
    ax.axhline(0, color="black", linewidth=0.8)
    p = rec.get("paired") or {}
    if p.get("mean") is not None:
        ax.axhline(p["mean"], color="#7f8c8d", linestyle="--", linewidth=0.8, label=f"mean {p['mean']:+.2e}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("window")
    ax.set_ylabel("ΔNLL (nats)")
    ax.set_title(f"{rec.get('nodeid', '')} [{rec.get('status')}]", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_reports(
    report_dir: str | Path | None,
    records: Sequence[dict[str, Any]],
    update_rows: Sequence[dict] = (),
    blocked: str | None = None,
) -> list[Path]:
    """JSON + Markdown (+ PNGs for failing/updated variants) into ``report_dir``; Markdown also to
    ``$GITHUB_STEP_SUMMARY`` when set. Returns the written paths."""
    written: list[Path] = []
    md = markdown(records, update_rows, blocked)
    if report_dir:
        out = Path(report_dir)
        out.mkdir(parents=True, exist_ok=True)
        payload = {"records": list(records), "updates": list(update_rows), "updates_blocked": blocked}
        (out / "pplgate-results.json").write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        (out / "pplgate-summary.md").write_text(md, encoding="utf-8")
        written += [out / "pplgate-results.json", out / "pplgate-summary.md"]
        for rec in records:
            if rec.get("status") in ("fail", "updated", "drift"):
                png = plot_window_deltas(rec, out / f"{_slug(rec.get('nodeid', 'variant'))}.png")
                if png is not None:
                    written.append(png)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(md + "\n")
    return written

"""The Markdown report (PR comment / step summary): verdict, table, one section per entry to act on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pplgate.gate.detect import DetectableShift
from pplgate.gate.layers import NO_PROFILE, WHERE
from pplgate.gate.record import FAILING, Status
from pplgate.gate.reports import kld as report_kld
from pplgate.gate.reports.tables import HEADER, MD_MARK, STATUS_WORDS, Record, _row, as_dict, update_table, verdict
from pplgate.gate.stats import PairedStats


def _pct(rec: Mapping[str, Any]) -> str:
    rel = rec.get("rel_delta")
    return "" if rel is None else f" ({rel:+.4%})"


def _paired_text(p: Mapping[str, Any]) -> str:
    """The terminal's paired-statistics sentence (with its noise-or-shift verdict) from a record's dict."""
    return PairedStats.from_dict(p).describe()


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _moved_lines(moved: Sequence[str] | None) -> list[str]:
    """Where the model moved against the record (:func:`pplgate.gate.layers.where_lines`), as list items."""
    if not moved:
        return []
    if list(moved) == [NO_PROFILE]:
        return [f"- {NO_PROFILE}"]
    return [f"- {WHERE}"] + [f"  - `{x}`" for x in moved]


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
    if rec.get("detectable"):
        lines.append(f"- {DetectableShift.from_dict(rec['detectable']).describe()}")
    lines += report_kld.section_lines(rec)
    lines += _moved_lines(rec.get("moved"))
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
        row[7] = f"{MD_MARK.get(rec.get('status', ''), '')} {row[7]}"
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

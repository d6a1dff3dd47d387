"""The KL divergence / top-1 agreement parts of the gate's reports (for entries with a ``reference``).

The other modules of :mod:`pplgate.gate.reports` (``tables``, ``markdown``, ``files``) call these: two
table columns (shown only when some record has a comparison), JUnit properties, the Markdown section's
lines and a per-window ΔKLD PNG. Records are
the dicts of :meth:`~pplgate.gate.record.GateRecord.to_dict`; their ``kld`` block is
:func:`pplgate.gate.kld.record_block`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from pplgate.gate.kld import describe_paired, rounding_step, summary_line
from pplgate.gate.record import FAILING
from pplgate.gate.reports.images import attach, integer_windows, save

COLUMNS = ["kld", "top1"]


def _block(rec: Mapping[str, Any]) -> Mapping[str, Any] | None:
    block = rec.get("kld")
    return block if isinstance(block, Mapping) else None


def cells(rec: Mapping[str, Any]) -> list[str]:
    """``0.1235 (+0.0001)`` and ``91.23%``: this run's mean KLD (Δ vs recorded) and top-1 agreement."""
    block = _block(rec)
    if block is None:
        return ["-", "-"]
    kld = f"{block['mean_kld']:.4f}"
    if block.get("baseline_mean_kld") is not None:
        kld += f" ({block['mean_kld'] - block['baseline_mean_kld']:+.4f})"
    return [kld, f"{block['top1_agreement']:.2%}"]


def with_columns(
    header: Sequence[str], rows: Sequence[list[str]], records: Sequence[Mapping[str, Any]]
) -> tuple[list[str], list[list[str]]]:
    """``header`` and ``rows`` with the kld/top1 columns appended when any record has a comparison."""
    if not any(_block(r) for r in records):
        return list(header), [list(r) for r in rows]
    return [*header, *COLUMNS], [[*row, *cells(rec)] for row, rec in zip(rows, records, strict=True)]


def junit_properties(rec: Mapping[str, Any]) -> list[tuple[str, Any]]:
    block = _block(rec)
    if block is None:
        return []
    return [
        ("pplgate_reference", block["reference"]),
        ("pplgate_mean_kld", f"{block['mean_kld']:.7g}"),
        ("pplgate_top1_agreement", f"{block['top1_agreement']:.6f}"),
    ]


def section_lines(rec: Mapping[str, Any]) -> list[str]:
    """The Markdown section's KLD lines: the values against the recorded ones, the paired ΔKLD."""
    block = _block(rec)
    if block is None:
        return []
    lines = [f"- {summary_line(block)}"]
    if block.get("paired"):
        lines.append(f"- {describe_paired(block['paired'])}")
    return lines


def window_kld_deltas(rec: Mapping[str, Any]) -> list[float] | None:
    """Per-window KLD deltas (current - recorded); None without two equally long vectors."""
    block = _block(rec)
    cur, base = (block or {}).get("window_klds"), (block or {}).get("baseline_window_klds")
    if not cur or not base or len(cur) != len(base):
        return None
    return [float(a) - float(b) for a, b in zip(cur, base, strict=True)]


def plot_window_klds(rec: Mapping[str, Any], path: Path, plt: Any) -> Path | None:
    """PNG of the per-window mean KLD (bars: this run, dots: recorded) and the top-1 agreement."""
    block = _block(rec)
    if block is None:
        return None
    klds, top1 = block["window_klds"], block["window_top1"]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 4.4), dpi=100, sharex=True)
    x = range(len(klds))
    ax.bar(x, klds, color="#c0392b", alpha=0.75, label="this run")
    if block.get("baseline_window_klds") and len(block["baseline_window_klds"]) == len(klds):
        ax.plot(x, block["baseline_window_klds"], "o", color="black", markersize=3, label="recorded")
    ax.set_ylabel("mean KLD (nats)")
    ax.legend(loc="upper right", fontsize=8)
    ax2.plot(x, top1, "-o", color="#2e86c1", markersize=3, label="this run")
    if block.get("baseline_window_top1") and len(block["baseline_window_top1"]) == len(top1):
        ax2.plot(x, block["baseline_window_top1"], "o", color="black", markersize=3, label="recorded")
    ax2.set_ylabel("top-1 agreement")
    integer_windows(ax2)
    ax2.set_xlabel("window")
    ax2.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{rec.get('nodeid', '')} [{rec.get('status', '')}]\n{summary_line(block)}", fontsize=8)
    return save(plt, fig, path)


def add_plots(
    report_dir: Path,
    records: Sequence[Mapping[str, Any]],
    plotted: Sequence[str],
    plots: MutableMapping[str, str],
    paths: list[Path],
    pyplot: Any,
    slug: Any,
) -> None:
    """A KLD PNG for each plotted record with a comparison whose KLD moved (or that fails); its link is
    appended to ``plots[nodeid]``. ``pyplot()`` is reports' ``(plt, why_not)``; ``slug`` its file namer."""
    for rec in records:
        deltas = window_kld_deltas(rec)
        if rec.get("status") not in plotted or _block(rec) is None:
            continue
        step = rounding_step(_block(rec).get("baseline_window_klds") or [])
        if deltas is not None and all(abs(d) <= step for d in deltas) and rec.get("status") not in FAILING:
            continue
        plt, why_not = pyplot()
        if plt is None:
            continue  # reports' own NLL plot loop has noted why
        nodeid = rec.get("nodeid", "variant")
        png = plot_window_klds(rec, report_dir / f"{slug(nodeid)}-kld.png", plt)
        attach(plots, paths, nodeid, png, "per-window KLD plot")

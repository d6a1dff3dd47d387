"""Writing the reports: JSON + Markdown (+ PNGs) into a directory, Markdown to ``$GITHUB_STEP_SUMMARY``."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pplgate.gate.record import FAILING
from pplgate.gate.reports import kld as report_kld
from pplgate.gate.reports import layers as report_layers
from pplgate.gate.reports.images import image_link
from pplgate.gate.reports.markdown import markdown
from pplgate.gate.reports.plots import (
    _pyplot,
    _slug,
    classify_deltas,
    plot_window_deltas,
    window_deltas,
)
from pplgate.gate.reports.tables import PLOTTED, ROUNDING_STEP, Record, as_dict, relpath


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
                plots[nodeid] = image_link("per-window ΔNLL plot", png.name)
        report_kld.add_plots(d, records, PLOTTED, plots, out.paths, _pyplot, _slug)
        report_layers.add_plots(d, records, plots, out.paths, _pyplot, _slug)
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

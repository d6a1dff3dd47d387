"""Gate reports: JUnit properties, terminal tables, JSON, Markdown (PR comment / step summary), PNG plots.

Every function takes :class:`~pplgate.gate.verdict.GateRecord` objects or their dicts
(:meth:`~pplgate.gate.verdict.GateRecord.to_dict`, the form that travels from pytest-xdist workers to
the controller), so a distributed run is reported by the controller exactly like a single-process run.
matplotlib is imported only when a PNG is drawn.

* :mod:`.tables`: status marks and words, the terminal table (time per phase), JUnit properties, the verdict;
* :mod:`.plots`: per-window NLL deltas, classified and drawn;
* :mod:`.markdown`: the PR comment / step summary;
* :mod:`.files`: :func:`write_reports` (JSON, Markdown, PNGs, ``$GITHUB_STEP_SUMMARY``);
* :mod:`.kld`: the KLD / top-1 columns, JUnit properties, Markdown lines and per-window KLD PNG (entries
  with a ``reference``).
"""

from __future__ import annotations

from pplgate.gate.reports.files import WrittenReports, write_reports
from pplgate.gate.reports.markdown import markdown
from pplgate.gate.reports.plots import MATPLOTLIB_MISSING, _slug, classify_deltas, plot_window_deltas, window_deltas
from pplgate.gate.reports.tables import (
    HEADER,
    MD_MARK,
    PHASE_ORDER,
    PLOTTED,
    ROUNDING_STEP,
    STATUS_MARK,
    STATUS_WORDS,
    Record,
    as_dict,
    junit_properties,
    phases_cell,
    relpath,
    terminal_table,
    update_table,
    verdict,
)

__all__ = [
    "HEADER",
    "MATPLOTLIB_MISSING",
    "MD_MARK",
    "PHASE_ORDER",
    "PLOTTED",
    "ROUNDING_STEP",
    "STATUS_MARK",
    "STATUS_WORDS",
    "Record",
    "WrittenReports",
    "_slug",
    "as_dict",
    "classify_deltas",
    "junit_properties",
    "markdown",
    "phases_cell",
    "plot_window_deltas",
    "relpath",
    "terminal_table",
    "update_table",
    "verdict",
    "window_deltas",
    "write_reports",
]

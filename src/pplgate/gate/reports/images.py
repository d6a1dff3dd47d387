"""How a report shows its PNGs: integer window ticks, and the Markdown that links (or inlines) a PNG.

Imports nothing of the other report modules (plots and kld both use it)."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

REPORT_URL_ENV = "PPLGATE_REPORT_URL"


def integer_windows(ax: Any) -> None:
    """Window numbers on the x axis: integer ticks only (matplotlib's default puts 0.5 steps on a few bars)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def image_link(what: str, name: str) -> str:
    """The Markdown for a report PNG: an inline image ``![what](URL)`` when ``$PPLGATE_REPORT_URL`` says where
    the workflow serves the report's files (``{name}`` in it is replaced by the file name, else ``/name`` is
    appended), so it renders in a pull-request comment and the step summary; else a link relative to the
    report folder (it opens from the downloaded artifact)."""
    base = os.environ.get(REPORT_URL_ENV, "").strip()
    if not base:
        return f"{what}: [{name}]({name})"
    url = base.replace("{name}", name) if "{name}" in base else f"{base.rstrip('/')}/{name}"
    return f"{what}: ![{name}]({url})"


def save(plt: Any, fig: Any, path: Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` and close it."""
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def attach(plots: MutableMapping[str, str], paths: list[Path], nodeid: str, png: Path | None, what: str) -> None:
    """Keep ``png`` (None: nothing drawn) among the report's files and add its link to ``plots[nodeid]``."""
    if png is None:
        return
    paths.append(png)
    link = image_link(what, png.name)
    plots[nodeid] = f"{plots[nodeid]}; {link}" if nodeid in plots else link

"""Per-window NLL deltas against the recorded ones: classified, and drawn as a PNG (matplotlib imported only here)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pplgate.gate.reports.images import integer_windows, save
from pplgate.gate.reports.tables import ROUNDING_STEP, STATUS_MARK, Record, as_dict

MATPLOTLIB_MISSING = (
    "PNG report skipped: matplotlib is not installed (pip install matplotlib, or pip install -e '.[report]')"
)


def window_deltas(rec: Mapping[str, Any]) -> list[float] | None:
    """Per-window NLL deltas (current - recorded); None without two equally long lists."""
    cur, base = rec.get("window_nlls"), rec.get("baseline_window_nlls")
    if not cur or not base or len(cur) != len(base):
        return None
    return [float(a) - float(b) for a, b in zip(cur, base, strict=True)]


def classify_deltas(deltas: Sequence[float], step: float = ROUNDING_STEP) -> list[int]:
    """+1 worse, -1 better, 0 within the storage rounding step (``paired_stats`` counts the same way)."""
    return [1 if d > step else -1 if d < -step else 0 for d in deltas]


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
    integer_windows(ax)
    ax.set_xlabel("window")
    ax.set_ylabel("ΔNLL (nats)")
    n_worse, n_better = kinds.count(1), kinds.count(-1)
    ax.set_title(
        f"{rec.get('nodeid', '')} [{STATUS_MARK.get(rec.get('status', ''), rec.get('status'))}]\n"
        f"{n_worse}/{len(kinds)} windows worse, {n_better} better, "
        f"{kinds.count(0)} within ±{step:g} (rounding)",
        fontsize=9,
    )
    return save(plt, fig, path)

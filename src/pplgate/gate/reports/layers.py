"""The per-layer PNG of an entry whose failure says where it moved: each module type's output error vs the
reference over the decoder layers, recorded (dashed) and measured (solid) (:mod:`pplgate.gate.layers`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from pplgate.gate.layers import LAYER_TOKENS
from pplgate.gate.record import MOVED
from pplgate.gate.reports.images import attach, integer_windows, save


def _series(layers: Mapping[str, Any]) -> dict[str, list[float]]:
    """Module type -> errors over the layers (``nan`` for a null: a gap in the line; ``inf`` drawn as a gap)."""
    out = {}
    for module, values in layers.items():
        if isinstance(values, list):
            out[module] = [math.nan if x is None or not math.isfinite(x) else float(x) for x in values]
    return out


def plot_layers(rec: Mapping[str, Any], path: Path, plt: Any) -> Path | None:
    """The PNG (None without both profiles over decoder layers)."""
    now, then = _series(rec.get("layers") or {}), _series(rec.get("baseline_layers") or {})
    if not now or not then:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, module in enumerate(dict.fromkeys([*then, *now])):
        c = colours[i % len(colours)]
        if module in then:
            ax.plot(range(len(then[module])), then[module], "--", color=c, marker="x", linewidth=0.8)
        if module in now:
            ax.plot(range(len(now[module])), now[module], "-", color=c, marker="o", label=module, linewidth=1.2)
    ax.legend(loc="upper left", fontsize=7, ncol=2)
    integer_windows(ax)
    n = max(len(v) for v in [*now.values(), *then.values()])
    ax.set_xlim(-0.5, n - 0.5)
    if n <= 32:
        ax.set_xticks(range(n))
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("relative output error")
    ax.set_title(
        f"{rec.get('nodeid', '')}\nper-module output error vs the reference ({LAYER_TOKENS} tokens): "
        "recorded dashed, measured solid",
        fontsize=9,
    )
    return save(plt, fig, path)


def add_plots(
    report_dir: Path,
    records: Sequence[Mapping[str, Any]],
    plots: MutableMapping[str, str],
    paths: list[Path],
    pyplot: Any,
    slug: Any,
) -> None:
    """A per-layer PNG for each record whose message says where it moved; its link is appended to
    ``plots[nodeid]`` (``pyplot()``/``slug``: as :func:`pplgate.gate.reports.kld.add_plots` takes them)."""
    for rec in records:
        if rec.get("status") not in MOVED or not rec.get("layers") or not rec.get("baseline_layers"):
            continue
        plt, _ = pyplot()
        if plt is None:
            continue  # the NLL plot loop has noted why
        nodeid = rec.get("nodeid", "variant")
        png = plot_layers(rec, report_dir / f"{slug(nodeid)}-layers.png", plt)
        attach(plots, paths, nodeid, png, "per-layer output error plot")

"""The gate's comparison with a reference entry: KL divergence and top-1 agreement (pure Python).

An entry that names ``reference: <entry>`` (another entry of its profile) is scored against that
entry's model on the same windows in the same session. Its recorded block then holds, beside
``ppl`` and ``window_nlls``::

    mean_kld: 0.123456                  # mean over windows of the per-window mean KLD (nats)
    top1_agreement: 0.912345            # fraction of positions where both models' argmax agree
    window_klds: [0.11, 0.13, ...]      # per window, in window order (7 significant digits)
    window_top1: [0.91, 0.92, ...]      # per window (6 decimals)

and its fingerprint a ``reference:`` block (the reference entry's name, variant and dtype), so a
changed reference reads as protocol drift. Rules: :class:`~pplgate.gate.rules.KldRule` and
:class:`~pplgate.gate.rules.Top1Rule`. All windows are equally long, so the mean of the per-window
values equals the token-weighted mean; a recorded block whose mean disagrees with its own vector
was edited by hand.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pplgate.gate.kld_rules import COMPARISON_METRICS
from pplgate.gate.stats import PairedStats, mean, paired_stats
from pplgate.gate.validator import Validator, real, shown

KLD_DIGITS = 7  # significant digits of stored KLDs (a fp16-vs-fp32 KLD is ~1e-5: decimals would lose it)
TOP1_DECIMALS = 6  # a window's agreement is k/(seqlen-1): 6 decimals resolve it
KLD_REL_EPS = 1e-6  # a per-window |ΔKLD| within this fraction of the recorded KLDs is storage rounding
RECORDED_KLD_KEYS = ("mean_kld", "top1_agreement", "window_klds", "window_top1")
_MEAN_REL, _MEAN_ABS = 2e-6, 2e-7  # mean vs mean(vector): 2-4x the storage rounding


@dataclass(frozen=True)
class KldMeasured:
    """One entry's comparison with its reference, as the verdict needs it."""

    reference: str
    mean_kld: float
    top1_agreement: float
    window_klds: Sequence[float]
    window_top1: Sequence[float]


@dataclass
class RecordedKld:
    mean_kld: float
    top1_agreement: float
    window_klds: list[float]
    window_top1: list[float]


def round_kld(x: float) -> float:
    return float(f"{x:.{KLD_DIGITS - 1}e}")


def recorded_block(m: KldMeasured) -> dict[str, Any]:
    """The keys an update writes into ``recorded:`` (rounded to the stored precision)."""
    return {
        "mean_kld": round_kld(m.mean_kld),
        "top1_agreement": round(m.top1_agreement, TOP1_DECIMALS),
        "window_klds": [round_kld(x) for x in m.window_klds],
        "window_top1": [round(x, TOP1_DECIMALS) for x in m.window_top1],
    }


def reference_name(entry: Any) -> str | None:
    """What an entry is compared with, in words: the reference entry's name, or ``file <name>`` (a stored one)."""
    if entry.reference_file:
        return f"file {os.path.basename(entry.reference_file)}"
    return entry.reference


def reference_identity(name: str, variant: Mapping[str, Any], dtype: str) -> dict[str, Any]:
    """The fingerprint's ``reference`` block: which entry, which variant of it, in which dtype."""
    return {"entry": name, "variant": dict(variant), "dtype": dtype}


# --------------------------------------------------------------------------- validation


def parse_recorded_kld(v: Validator, node: Mapping, keypath: str, rerecord: str) -> RecordedKld | None:
    """The recorded KLD keys of a ``recorded:`` block: all four or none."""
    present = [k for k in RECORDED_KLD_KEYS if k in node]
    if not present:
        return None
    if len(present) != len(RECORDED_KLD_KEYS):
        missing = ", ".join(k for k in RECORDED_KLD_KEYS if k not in node)
        v.err(keypath, f"recorded KLD keys come together: {missing} missing; {rerecord}", node)

    def number(x: Any, kp: str, hi: float, parent: Any, key: Any) -> float:
        f = real(x)
        if f is None or not math.isfinite(f) or f < 0 or f > hi:
            rng = ">= 0" if hi == math.inf else "in [0, 1]"
            v.err(kp, f"expected a finite number {rng}, got {shown(x)}; {rerecord}", parent, key)
        return f

    vectors = []
    for key, hi in (("window_klds", math.inf), ("window_top1", 1.0)):
        raw = node[key]
        if not isinstance(raw, list) or not raw:
            v.err(f"{keypath}.{key}", f"expected a non-empty list of numbers; {rerecord}", node, key)
        vectors.append([number(x, f"{keypath}.{key}[{i}]", hi, raw, i) for i, x in enumerate(raw)])
    return RecordedKld(
        mean_kld=number(node["mean_kld"], f"{keypath}.mean_kld", math.inf, node, "mean_kld"),
        top1_agreement=number(node["top1_agreement"], f"{keypath}.top1_agreement", 1.0, node, "top1_agreement"),
        window_klds=vectors[0],
        window_top1=vectors[1],
    )


def check_reference(v: Validator, entries: Mapping[str, Any], es: Any, kp: str, profiles: Mapping) -> None:
    """``es.reference`` names another entry of the profile; KLD/top1 rules need one, and their ``ref``
    must be compared with the same reference."""
    ref, ekp = es.reference, f"{kp}.variants.{es.name}"
    if ref is not None:
        if ref == es.name:
            v.err(f"{ekp}.reference", "an entry cannot be its own reference", line=es.line)
        if ref not in entries:
            elsewhere = [p for p in profiles if ref in profiles[p].variants]
            hint = f"; {ref!r} is an entry of profile {', '.join(elsewhere)}" if elsewhere else ""
            v.err(
                f"{ekp}.reference",
                f"reference {ref!r} is not an entry of this profile (entries: {', '.join(entries)}){hint}: "
                "the reference is scored on the same device and windows in the same session",
                line=es.line,
            )
    for i, rule in enumerate(es.rules):
        if rule.metric not in COMPARISON_METRICS:  # ppl and speed rules need no reference
            continue
        line = es.rule_lines[i] if i < len(es.rule_lines) else None
        if ref is None and es.reference_file is None:
            v.err(
                f"{ekp}.tolerance[{i}]",
                f"a {rule.type} rule compares with the entry's reference: add `reference: <entry>` (or `reference: "
                "{file: PATH}`, a stored reference) to the entry",
                line=line,
            )
        other = entries.get(rule.ref) if rule.ref else None
        if other is not None and (other.reference, other.reference_file) != (ref, es.reference_file):
            theirs, mine = other.reference or other.reference_file, ref or es.reference_file
            v.err(
                f"{ekp}.tolerance[{i}].ref",
                f"{rule.ref!r} is compared with reference {theirs!r}, this entry with {mine!r}: a {rule.type} "
                "rule compares entries scored against the same reference",
                line=line,
            )


def recorded_kld_problems(reference: str | None, recorded: Any) -> list[str]:
    """How the recorded KLD block contradicts itself or the entry (empty when it does not)."""
    rk: RecordedKld | None = getattr(recorded, "kld", None)
    if recorded is None or (rk is None and reference is None):
        return []
    if rk is None:
        return [f"the entry is compared with reference {reference!r}, but its recorded block holds no KLD"]
    out = []
    n = len(recorded.window_nlls)
    for key, vec in (("window_klds", rk.window_klds), ("window_top1", rk.window_top1)):
        if len(vec) != n:
            out.append(f"the recorded {key} hold {len(vec)} values, but window_nlls {n}")
    for key, value, vec in (
        ("mean_kld", rk.mean_kld, rk.window_klds),
        ("top1_agreement", rk.top1_agreement, rk.window_top1),
    ):
        own = mean(vec)
        if not abs(own - value) <= _MEAN_REL * abs(value) + _MEAN_ABS:
            out.append(f"the recorded {key} {value:.7g} is not the mean of its own per-window values ({own:.7g})")
    return out


# --------------------------------------------------------------------------- judging


def record_block(m: KldMeasured, recorded: RecordedKld | None, n_windows: int, partial: bool) -> dict[str, Any]:
    """The record's ``kld`` dict: this run's values, the recorded ones (its first windows in a partial run),
    and the paired per-window ΔKLD."""
    out: dict[str, Any] = {
        "reference": m.reference,
        "mean_kld": m.mean_kld,
        "top1_agreement": m.top1_agreement,
        "window_klds": list(m.window_klds),
        "window_top1": list(m.window_top1),
    }
    if recorded is None:
        return out
    klds, top1 = recorded.window_klds, recorded.window_top1
    if partial:
        klds, top1 = klds[:n_windows], top1[:n_windows]
    out["baseline_mean_kld"] = mean(klds) if partial else recorded.mean_kld
    out["baseline_top1_agreement"] = mean(top1) if partial else recorded.top1_agreement
    out["baseline_window_klds"], out["baseline_window_top1"] = list(klds), list(top1)
    if len(klds) == len(m.window_klds):
        out["paired"] = paired_stats(m.window_klds, klds, eps=rounding_step(klds)).to_dict()
    return out


def rounding_step(window_klds: Sequence[float]) -> float:
    """The |ΔKLD| per window that the storage rounding (7 significant digits) explains, with margin."""
    return KLD_REL_EPS * max((abs(x) for x in window_klds), default=0.0) + 1e-15


def describe_paired(p: Mapping[str, Any]) -> str:
    """The paired per-window ΔKLD sentence (as ``PairedStats.describe`` is for ΔNLL)."""
    s = PairedStats.from_dict(p)
    ci = "95% CI n/a (1 window)" if s.ci_low is None else f"95% CI [{s.ci_low:+.6f}, {s.ci_high:+.6f}]"
    return (
        f"paired per-window dKLD over {s.n} window{'s' * (s.n != 1)}: mean {s.mean:+.6f} nats, {ci} ({s.verdict}); "
        f"{s.n_worse}/{s.n} windows worse, {s.n_better} better, max |dKLD| {s.max_abs:.6f}"
    )


def summary_line(block: Mapping[str, Any]) -> str:
    """``KLD vs fp32: mean 0.123456 (recorded 0.123400, +0.000056); top-1 agreement 91.23% (recorded ...)``."""
    text = f"KLD vs {block['reference']}: mean {block['mean_kld']:.6f}"
    base = block.get("baseline_mean_kld")
    if base is not None:
        text += f" (recorded {base:.6f}, {block['mean_kld'] - base:+.6f})"
    text += f"; top-1 agreement {block['top1_agreement']:.4%}"
    base = block.get("baseline_top1_agreement")
    if base is not None:
        text += f" (recorded {base:.4%}, {block['top1_agreement'] - base:+.4%})"
    return text


def worse_than_recorded(block: Mapping[str, Any] | None) -> bool:
    """The KLD rose or the agreement fell against the recorded values."""
    if not block or block.get("baseline_mean_kld") is None:
        return False
    return block["mean_kld"] > block["baseline_mean_kld"] or block["top1_agreement"] < block["baseline_top1_agreement"]

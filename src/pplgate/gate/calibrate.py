"""Tolerances from measured spread (``pplgate calibrate``): pure Python, no torch.

An entry measured N times (re-quantized each time) gives, per tolerance rule, N values of the quantity
the rule bounds. Two kinds of rule:

* a **width** around the recorded value (``absolute``, ``relative``, and ``kld``/``top1`` with
  ``max_delta``/``max_rel`` and no ``ref``): the proposal is :data:`MULTIPLE_TEXT` of the measured
  spread, at least the largest distance of a run from the recorded value, never below the storage
  rounding of the metric (:func:`floor_of`), rounded up to 2 significant digits. An entry whose N
  values are equal is "deterministic over N runs" and gets the rounding floor.
* a **limit** (a ``relational`` or ``speed`` rule, a ``kld``/``top1`` rule with ``ref``, ``max_mean``,
  ``min_agreement``): a claim (no worse than RTN, at least 0.8x the speed of fp32), not a width. The
  proposal keeps the bound unless its headroom over the worst run is below the margin (the multiple of
  the spread); then it is loosened to the worst run plus that margin.

Verdicts: ``current is tighter than the spread: will flake`` (a width below the spread or below a
run's distance from the record; a limit whose headroom is below the spread), ``looser than 10x the
spread`` (a width above 10x the spread, or 10x the rounding floor for a deterministic entry), ``tight``
(a limit whose headroom is below the margin: loosened in the proposal), ``ok``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pplgate.gate.kld import KLD_DIGITS, TOP1_DECIMALS
from pplgate.gate.rules import RelationalRule, Rule, SpeedRule
from pplgate.gate.store import PPL_DECIMALS

RANGE_MULTIPLE = 3.0  # x (max - min)
SD_MULTIPLE = 6.0  # x sample standard deviation
MULTIPLE_TEXT = "max(3 x range, 6 x sd)"
LOOSE_FACTOR = 10.0  # a width above this many spreads detects little
SPEED_DECIMALS = 4  # a speed rule's ratio as the record stores it (RuleResult.value)
FLAKY = "current is tighter than the spread: will flake"
LOOSE = "looser than 10x the spread"
OK = "ok"
TIGHT = "tight"


@dataclass(frozen=True)
class Spread:
    """N values: min, max, range (max - min) and the sample standard deviation."""

    n: int
    low: float
    high: float
    sd: float

    @property
    def range(self) -> float:
        return self.high - self.low

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if len(values) < 2:
            raise ValueError(f"a spread needs at least 2 values, got {len(values)}")
        return cls(len(values), min(values), max(values), statistics.stdev(values))

    def margin(self) -> float:
        """The stated multiple of the spread: :data:`MULTIPLE_TEXT`."""
        return max(RANGE_MULTIPLE * self.range, SD_MULTIPLE * self.sd)


@dataclass(frozen=True)
class Proposal:
    """One rule of one entry: what it bounds over N runs, its current and proposed bound, the verdict."""

    entry: str
    index: int  # the rule's position in the entry's tolerance list
    rule: Rule
    quantity: str  # what the rule bounds, e.g. ``ppl``, ``ppl - ppl[rtn]``, ``tok/s / tok/s[fp32]``
    values: tuple[float, ...]  # the rule's quantity per run (a width rule: the metric itself)
    key: str  # the YAML key holding the bound
    current: float
    proposed: float
    floor: float  # the storage rounding of the quantity
    verdict: str
    deterministic: bool
    offset: float | None = None  # a width rule: the largest |run - recorded| (None: nothing recorded)

    @property
    def spread(self) -> Spread:
        return Spread.of(self.values)

    @property
    def changed(self) -> bool:
        return self.proposed != self.current

    def note(self) -> str:
        """The spread in words (the comment written beside an updated rule)."""
        s = self.spread
        if self.deterministic:
            return f"deterministic over {s.n} runs ({self.quantity} {_num(s.low)})"
        return f"{self.quantity} over {s.n} runs: {_num(s.low)}..{_num(s.high)}, range {s.range:.3g}, sd {s.sd:.3g}"

    def reason(self) -> str:
        """How the proposal follows from the spread, in words (the second half of that comment)."""
        bound = f"{self.key} {format_number(self.proposed)}"
        if not is_width(self.rule):
            return f"bound kept: {self.verdict}" if not self.changed else f"worst run + {MULTIPLE_TEXT} -> {bound}"
        if self.deterministic and self.proposed <= round_up(self.floor):
            return f"the storage rounding -> {bound}"
        if self.offset is not None and self.offset > self.spread.margin():
            return f"runs up to {_num(self.offset)} from the recorded value -> {bound}"
        return f"{MULTIPLE_TEXT} -> {bound}"

    def to_dict(self) -> dict[str, Any]:
        s = self.spread
        return {
            "entry": self.entry,
            "rule": self.index,
            "type": self.rule.type,
            "quantity": self.quantity,
            "values": list(self.values),
            "n": s.n,
            "min": s.low,
            "max": s.high,
            "range": s.range,
            "sd": s.sd,
            "key": self.key,
            "current": self.current,
            "proposed": self.proposed,
            "floor": self.floor,
            "offset": self.offset,
            "deterministic": self.deterministic,
            "verdict": self.verdict,
        }


def _num(x: float, digits: int = 8) -> str:
    return f"{x:.{digits}g}"


def floor_of(metric: str, values: Sequence[float] = ()) -> float:
    """One unit of the last place the store writes ``metric`` with: ppl 6 decimals, top-1 6 decimals, the
    mean KLD 7 significant digits (of the largest value), a speed ratio 4 decimals."""
    if metric == "ppl":
        return 10.0**-PPL_DECIMALS
    if metric == "top1":
        return 10.0**-TOP1_DECIMALS
    if metric == "kld":
        top = max((abs(v) for v in values), default=0.0)
        return 10.0 ** (math.floor(math.log10(top)) - (KLD_DIGITS - 1)) if top > 0 else 10.0**-12
    if metric == "tokens_per_s":
        return 10.0**-SPEED_DECIMALS
    raise ValueError(f"unknown metric {metric!r}")


def round_up(x: float, digits: int = 2) -> float:
    """``x`` rounded up (away from zero) to ``digits`` significant digits."""
    if x == 0 or not math.isfinite(x):
        return x
    scale = 10.0 ** (math.floor(math.log10(abs(x))) - digits + 1)
    return math.copysign(math.ceil(round(abs(x) / scale, 9)) * scale, x)


def _clean(x: float) -> float:
    return float(f"{x:.12g}")


def bound_key(rule: Rule) -> str:
    """The YAML key of ``rule``'s bound."""
    if isinstance(rule, SpeedRule):
        return "min_ratio"
    bound = getattr(rule, "bound", None)
    if bound is not None:
        return rule.bound_key  # type: ignore[attr-defined]
    return "max_delta" if getattr(rule, "max_delta", None) is not None else "max_rel"


def is_width(rule: Rule) -> bool:
    """A width around the recorded value (else a limit: a claim checked in the session)."""
    return rule.needs_recorded and not isinstance(rule, (RelationalRule, SpeedRule))


def quantity(rule: Rule, entry: str, runs: Sequence[Mapping[str, Mapping[str, float]]]) -> tuple[str, list[float]]:
    """What ``rule`` of ``entry`` bounds, per run, as ``(label, values)``. A width rule: the metric itself; a
    limit: the bounded expression, in the rule's own sign (a higher KLD, a lower agreement are worse)."""
    metric = rule.metric
    own = [run[entry][metric] for run in runs]
    ref = getattr(rule, "ref", None)
    if isinstance(rule, SpeedRule):
        return f"tok/s / tok/s[{ref}]", [v / run[ref][metric] for v, run in zip(own, runs, strict=True)]
    if ref is None or is_width(rule):
        return metric, own
    base = [run[ref][metric] for run in runs]
    worse_up = metric != "top1" or rule.direction == "both"
    diff = [(v - b) if worse_up else (b - v) for v, b in zip(own, base, strict=True)]
    label = f"{metric} - {metric}[{ref}]" if worse_up else f"{metric}[{ref}] - {metric}"
    if getattr(rule, "max_rel", None) is not None:
        label, diff = f"({label}) / {metric}[{ref}]", [d / b for d, b in zip(diff, base, strict=True)]
    if rule.direction == "both":  # the rule bounds the absolute value
        label, diff = f"|{label}|", [abs(d) for d in diff]
    return label, diff


def propose(
    rule: Rule,
    entry: str,
    index: int,
    runs: Sequence[Mapping[str, Mapping[str, float]]],
    *,
    recorded: float | None = None,
) -> Proposal:
    """The proposal for one rule from N runs' values (``runs[i][entry_name][metric]``); ``recorded``: the
    entry's recorded value of the rule's metric (a width rule's centre)."""
    label, values = quantity(rule, entry, runs)
    key = bound_key(rule)
    current = float(getattr(rule, "bound", None) if key in ("max_mean", "min_agreement") else getattr(rule, key))
    raw = [run[entry][rule.metric] for run in runs]
    floor = floor_of(rule.metric, raw)
    if key == "max_rel":  # a relative width: values and floor as fractions of the recorded (or mean) value
        centre = recorded if recorded else statistics.fmean(raw)
        floor = floor / abs(centre)
        if is_width(rule):
            values = [v / centre - 1.0 for v in values]
            recorded = 0.0 if recorded else None
    spread = Spread.of(values)
    deterministic = spread.range == 0
    if is_width(rule):
        return _width(rule, entry, index, label, values, key, current, floor, spread, recorded, deterministic)
    return _limit(rule, entry, index, label, values, key, current, floor, spread, deterministic)


def _width(rule, entry, index, label, values, key, current, floor, spread, recorded, deterministic) -> Proposal:
    offset = max(abs(v - recorded) for v in values) if recorded is not None else None
    need = max(spread.margin(), offset or 0.0)
    proposed = _clean(max(floor, round_up(need))) if need > 0 else _clean(round_up(floor))
    if current < max(spread.range, offset or 0.0):
        verdict = FLAKY
    elif current > LOOSE_FACTOR * max(spread.range, floor):
        verdict = LOOSE
    else:
        verdict = OK
    return Proposal(
        entry, index, rule, label, tuple(values), key, current, proposed, floor, verdict, deterministic, offset
    )


def _limit(rule, entry, index, label, values, key, current, floor, spread, deterministic) -> Proposal:
    lower = key in ("min_ratio", "min_agreement")  # a lower bound on the quantity (else an upper one)
    worst = spread.low if lower else spread.high
    headroom = (worst - current) if lower else (current - worst)
    margin = max(spread.margin(), floor)
    if headroom >= margin:
        proposed = current
    else:  # loosened to the worst run plus the margin, rounded outward to the floor
        target = worst - margin if lower else worst + margin
        steps = (math.floor if lower else math.ceil)(round(target / floor, 6))
        proposed = _clean(steps * floor)
    if headroom < 0 or headroom < spread.range:
        verdict = FLAKY
    elif headroom < margin:
        verdict = f"{TIGHT} (headroom {_num(headroom)} < margin {_num(margin)})"
    else:
        verdict = f"{OK} (headroom {_num(headroom)})"
    return Proposal(entry, index, rule, label, tuple(values), key, current, proposed, floor, verdict, deterministic)


def recorded_value(recorded: Any, metric: str) -> float | None:
    """The recorded value of ``metric`` from an entry's :class:`~pplgate.gate.spec.Recorded` (None if absent)."""
    if recorded is None:
        return None
    if metric == "ppl":
        return recorded.ppl
    if recorded.kld is None:
        return None
    return {"kld": recorded.kld.mean_kld, "top1": recorded.kld.top1_agreement}.get(metric)


def propose_entry(entry: Any, runs: Sequence[Mapping[str, Mapping[str, float]]]) -> list[Proposal]:
    """One :class:`Proposal` per rule of ``entry`` (an :class:`~pplgate.gate.spec.EntrySpec`)."""
    return [
        propose(rule, entry.name, i, runs, recorded=recorded_value(entry.recorded, rule.metric))
        for i, rule in enumerate(entry.rules)
    ]


def format_number(x: float) -> str:
    """``x`` as the YAML float a tolerance is written with: positional, no trailing zeros (``0.000012``)."""
    if x == 0:
        return "0.0"
    decimals = max(1, -math.floor(math.log10(abs(x))) + 8)
    text = f"{x:.{decimals}f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def table(entry: str, proposals: Sequence[Proposal]) -> str:
    """The per-entry table ``pplgate calibrate`` prints."""
    head = ("rule", "quantity", "N", "min", "max", "sd", "current", "proposed", "verdict")
    rows = [head]
    for p in proposals:
        s = p.spread
        verdict = p.verdict + (f"; deterministic over {s.n} runs" if p.deterministic else "")
        rows.append(
            (
                f"{p.index}:{p.rule.type}",
                p.quantity,
                str(s.n),
                _num(s.low, 10),
                _num(s.high, 10),
                f"{s.sd:.2g}",
                f"{p.key} {format_number(p.current)}",
                format_number(p.proposed),
                verdict,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    lines = [f"{entry}:"]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return "\n".join(lines)

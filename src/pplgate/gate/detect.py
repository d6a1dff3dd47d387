"""The detectable shift: the smallest change of an entry's perplexity (and KLD) its windows resolve.

:func:`~pplgate.gate.stats.detectable_shift` over the entry's ``n`` windows: ``(t_0.975 + t_0.80) * s / sqrt(n)``
(95% confidence two-sided, 80% power), with ``s`` the per-window standard deviation of the differences that a
change of the quantizer would show:

* an entry naming a ``reference:`` (or a ``relational`` rule's ``ref``): the sd over windows of
  ``NLL(entry) - NLL(reference)``, the quantization effect's heterogeneity across windows (a changed quantizer
  moves the windows about as unevenly as quantizing did). The record takes both from this run (equal to the
  recorded ones when the run reproduces its record); collection, from the recorded blocks;
* else (the fp32/fp16 references themselves): this run's paired differences against its record when they are
  not all zero, else the storage rounding (:data:`ROUNDING_SD`, one 6-decimal step per window NLL).

As a perplexity shift: ``ppl * (exp(delta) - 1)``; for the KLD: the sd of the entry's per-window KLDs.
A tolerance far above the detectable shift lets through changes the windows clearly resolve; one below the
run-to-run spread that ``pplgate calibrate`` measured flakes: :func:`tolerance_warnings`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pplgate.gate.rules import Rule
from pplgate.gate.stats import PairedStats, detectable_shift, mean, sample_sd
from pplgate.gate.tolerance_update import MARK

ROUNDING_SD = 1e-6  # a window NLL is stored to 6 decimals: one step per window when nothing else moves
KLD_ROUNDING_REL = 1e-6  # a window KLD is stored to 7 significant digits
LOOSE_FACTOR = 10.0  # a tolerance above this many detectable shifts lets resolvable changes through
_RANGE = re.compile(r" over (\d+) runs: \S+\.\.\S+, range ([0-9.eE+-]+)")


@dataclass(frozen=True)
class DetectableShift:
    """What one entry's windows resolve, with the tightest tolerance beside it (plain data for the record)."""

    n: int  # windows
    basis: str  # where ``sd`` comes from, in words
    sd: float  # per-window sd of the NLL differences (nats)
    ppl: float | None  # the smallest PPL shift detected (None: one window)
    rel: float | None  # as a fraction of the ppl
    kld: float | None = None  # the smallest mean-KLD shift detected (None: no KLD, or one window)
    tolerance: str | None = None  # the tightest ppl width rule, e.g. ``±0.005``
    tolerance_ppl: float | None = None  # its width in ppl
    kld_tolerance: str | None = None  # the tightest kld width rule
    kld_tolerance_width: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DetectableShift:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})

    @property
    def ratio(self) -> float | None:
        """The ppl tolerance in detectable shifts (None where either is missing or the shift is 0)."""
        return _ratio(self.tolerance_ppl, self.ppl)

    def describe(self) -> str:
        """``detects a PPL shift of >= 0.012 (0.05%) and a KLD shift of >= 0.0004 at 95% confidence over 2
        windows; tolerance ±0.005 is 0.4x that: ...``."""
        windows = f"{self.n} window{'s' * (self.n != 1)}"
        if self.ppl is None or self.rel is None:
            return f"detectable shift n/a (1 window): no t interval over {windows}"
        text = f"detects a PPL shift of >= {self.ppl:.3g} ({self.rel * 100:.3g}%)"
        if self.kld is not None:
            text += f" and a KLD shift of >= {self.kld:.3g}"
        text += f" at 95% confidence (80% power) over {windows} (s = {self.sd:.3g} nats/window: {self.basis})"
        for rule, ratio in ((self.tolerance, self.ratio), (self.kld_tolerance, self.kld_ratio)):
            if rule is not None and ratio is not None:
                text += f"; tolerance {rule} is {ratio:.2g}x that: {_meaning(ratio)}"
        return text

    @property
    def kld_ratio(self) -> float | None:
        return _ratio(self.kld_tolerance_width, self.kld)

    def cell(self) -> str:
        """The table cell: ``>=0.012``, ``n/a`` (one window)."""
        return "n/a" if self.ppl is None else f">={self.ppl:.2g}"


def _ratio(width: float | None, shift: float | None) -> float | None:
    return None if width is None or not shift else width / shift


def _meaning(ratio: float) -> str:
    if ratio < 1:
        return "it also fails on shifts the windows cannot tell from per-window variation"
    if ratio > LOOSE_FACTOR:
        return f"it lets through shifts up to {ratio:.2g}x what the windows resolve (tighten it)"
    return "it fails on shifts the windows resolve"


def _width(rule: Rule, base: float | None) -> float | None:
    """A tolerance around the recorded value, in the metric's units (None: a limit or a relational rule)."""
    if rule.type not in ("absolute", "relative", "kld") or getattr(rule, "ref", None) or getattr(rule, "bound", None):
        return None
    if getattr(rule, "max_delta", None) is not None:
        return float(rule.max_delta)  # type: ignore[attr-defined]
    rel = getattr(rule, "max_rel", None)
    return None if rel is None or base is None else rel * base


def _tightest(rules: Sequence[Rule], metric: str, base: float | None) -> tuple[str | None, float | None]:
    widths = [(w, r.short()) for r in rules if r.metric == metric for w in [_width(r, base)] if w is not None]
    if not widths:
        return None, None
    w, text = min(widths)
    return text, w


def compared_with(entry: Any) -> str | None:
    """The entry the quantization effect is measured against: the ``reference:``, else a relational rule's ref."""
    refs = [ref for r in entry.rules if r.type == "relational" for ref in r.refs]
    return entry.reference or (refs[0] if refs else None)


def shift(
    entry: Any,
    nlls: Sequence[float],
    ref_nlls: Sequence[float] | None,
    ppl: float,
    *,
    paired: PairedStats | None = None,
    window_klds: Sequence[float] | None = None,
    mean_kld: float | None = None,
) -> DetectableShift:
    """The detectable shift of ``entry`` scored ``nlls`` (``ref_nlls``: its reference's, on the same windows;
    ``paired``: this run against its record; ``window_klds``: its per-window KLDs against its reference)."""
    n, ref = len(nlls), compared_with(entry)
    sd, basis = 0.0, ""
    if ref is not None and ref_nlls is not None and len(ref_nlls) == n:
        sd = sample_sd([a - b for a, b in zip(nlls, ref_nlls, strict=True)])
        basis = f"the per-window dNLL vs {ref}"
    if sd == 0 and paired is not None and paired.sd > 0:
        sd, basis = paired.sd, "this run's per-window dNLL vs its record"
    if sd == 0:
        sd, basis = ROUNDING_SD, "the storage rounding, 1e-6 per window NLL"
    delta = detectable_shift(sd, n)
    rel = None if delta is None else math.expm1(delta)
    kld = None
    if window_klds and len(window_klds) == n:
        floor = KLD_ROUNDING_REL * max(window_klds)
        kld = detectable_shift(max(sample_sd(window_klds), floor), n)
        mean_kld = mean(window_klds) if mean_kld is None else mean_kld
    tol, tol_w = _tightest(entry.rules, "ppl", ppl)
    ktol, ktol_w = _tightest(entry.rules, "kld", mean_kld) if kld is not None else (None, None)
    return DetectableShift(
        n=n,
        basis=basis,
        sd=sd,
        ppl=None if rel is None else ppl * rel,
        rel=rel,
        kld=kld,
        tolerance=tol,
        tolerance_ppl=tol_w,
        kld_tolerance=ktol,
        kld_tolerance_width=ktol_w,
    )


def of_run(entry: Any, m: Any, paired: PairedStats | None, session: Mapping[str, Mapping[str, Any]]) -> DetectableShift:
    """The record's detectable shift: this run's NLLs (``m``: the verdict's ``Measured``) and its reference's
    (``session["window_nlls"]``: the NLLs the entries its rules name scored in this session)."""
    ref = compared_with(entry)
    ref_nlls = session.get("window_nlls", {}).get(ref) if ref is not None else None
    klds = list(m.kld.window_klds) if m.kld is not None else None
    return shift(entry, m.window_nlls, ref_nlls, m.ppl, paired=paired, window_klds=klds)


def of_recorded(entry: Any, entries: Mapping[str, Any]) -> DetectableShift | None:
    """The detectable shift from the recorded blocks (``entries``: the profile's, by name); None unrecorded."""
    rec = entry.recorded
    if rec is None:
        return None
    ref = compared_with(entry)
    other = entries.get(ref) if ref is not None else None
    ref_nlls = other.recorded.window_nlls if other is not None and other.recorded is not None else None
    klds = rec.kld.window_klds if rec.kld is not None else None
    return shift(entry, rec.window_nlls, ref_nlls, rec.ppl, window_klds=klds)


def calibrated_spreads(lines: Sequence[str], rule_lines: Sequence[int | None]) -> dict[int, tuple[float, int]]:
    """Per rule index, the ``(range, runs)`` that ``pplgate calibrate`` wrote in the ``# calibrated`` comment
    above the rule (``lines``: the file's lines; ``rule_lines``: each rule's 1-based line)."""
    out: dict[int, tuple[float, int]] = {}
    for i, line in enumerate(rule_lines):
        above = lines[line - 2].strip() if line is not None and line >= 2 else ""
        if not above.startswith(MARK):
            continue
        found = _RANGE.search(above)
        if found:
            out[i] = (float(found.group(2)), int(found.group(1)))
        elif (det := re.search(r"deterministic over (\d+) runs", above)) is not None:
            out[i] = (0.0, int(det.group(1)))
    return out


def tolerance_warnings(
    entry: Any, entries: Mapping[str, Any], spreads: Mapping[int, tuple[float, int]] | None = None
) -> list[str]:
    """Why ``entry``'s tolerance cannot do its job: a ppl/kld width above :data:`LOOSE_FACTOR` detectable
    shifts (only where the shift comes from a reference: a reference entry's own shift depends on the run), or a
    width below the run-to-run range ``pplgate calibrate`` recorded above the rule (``spreads``)."""
    out: list[str] = []
    d = of_recorded(entry, entries)
    ref = compared_with(entry)
    if d is not None and ref is not None and ref in entries:
        checks = (("PPL", d.tolerance, d.tolerance_ppl, d.ppl), ("KLD", d.kld_tolerance, d.kld_tolerance_width, d.kld))
        for what, rule, width, found in checks:
            if rule is None or width is None or not found or width <= LOOSE_FACTOR * found:
                continue
            out.append(
                f"tolerance {rule} is {width / found:.3g}x the detectable {what} shift ({found:.3g} over {d.n} "
                f"windows, s from the recorded dNLL/KLD vs {ref}): the gate cannot see a change smaller than "
                f"{width:g}; tighten it to <= {LOOSE_FACTOR * found:.3g} ({LOOSE_FACTOR:g}x the detectable shift)"
            )
    base = entry.recorded
    for i, (spread, runs) in sorted((spreads or {}).items()):
        rule = entry.rules[i]
        metric_base = base.ppl if base is not None and rule.metric == "ppl" else None
        if base is not None and base.kld is not None and rule.metric == "kld":
            metric_base = base.kld.mean_kld
        width = _width(rule, metric_base)
        if width is not None and width < spread:
            out.append(
                f"tolerance {rule.short()} is tighter than the measured spread (range {spread:.3g} over {runs} "
                "runs, # calibrated): it will flake; loosen it to the calibrated proposal"
            )
    return out


def collection_warnings(spec: Any, text: str) -> list[str]:
    """:func:`tolerance_warnings` of every entry of a baseline file (``text``: the file, for its comments)."""
    lines = text.splitlines()
    return [
        f"pplgate: {spec.path.name}: profiles.{profile.name}.variants.{entry.name}: {warning}"
        for profile in spec.profiles.values()
        for entry in profile.variants.values()
        for warning in tolerance_warnings(entry, profile.variants, calibrated_spreads(lines, entry.rule_lines))
    ]

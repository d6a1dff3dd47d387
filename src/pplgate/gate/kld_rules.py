"""The rules on an entry's comparison with its ``reference:`` (:mod:`pplgate.gate.kld`).

* :class:`KldRule` (``type: kld``): the mean KL divergence against the reference;
* :class:`Top1Rule` (``type: top1``): the top-1 agreement with the reference.

Each is either a bound on this entry alone (``max_mean`` / ``min_agreement``), or within
``max_delta``/``max_rel`` of the recorded value, or (with ``ref: <entry>``) of another entry's value
measured in the same session against the same reference. A higher KLD and a lower agreement are
worse. Registered in :data:`pplgate.gate.rules.RULE_TYPES` (which re-exports both classes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pplgate.gate.rule_base import DIRECTIONS, Rule, RuleResult
from pplgate.gate.validator import Validator

COMPARISON_METRICS = ("kld", "top1")  # the metrics of the rules below (measured against a reference)


@dataclass(frozen=True, kw_only=True)
class _ComparisonRule(Rule):
    """A rule on a comparison metric (vs the entry's ``reference``): a bound, a tolerance around the
    recorded value, or (``ref``) around another entry's value this session."""

    label: ClassVar[str]  # the metric in a sentence
    bound_key: ClassVar[str]  # the YAML key of the bound
    higher_is_worse: ClassVar[bool]

    bound: float | None = None
    max_delta: float | None = None
    max_rel: float | None = None
    ref: str | None = None

    @property
    def needs_recorded(self) -> bool:  # type: ignore[override]
        return self.bound is None and self.ref is None

    @property
    def refs(self) -> tuple[str, ...]:
        return () if self.ref is None else (self.ref,)

    def _base_name(self) -> str:
        return "recorded" if self.ref is None else f"{self.type}[{self.ref}]"

    def inputs(self, measured: Any, record: Any) -> tuple[float | None, float | None]:
        """The entry's mean KLD / top-1 agreement against its reference, and the recorded one."""
        key = "mean_kld" if self.metric == "kld" else "top1_agreement"
        value = None if measured.kld is None else getattr(measured.kld, key)
        return value, (record.kld or {}).get(f"baseline_{key}")

    def _subject(self) -> str:
        """The bounded expression, written so that a positive value is worse."""
        now, base = self.label, self._base_name()
        if self.direction == "both":
            diff = f"{now} - {base}"
        else:
            diff = f"{now} - {base}" if self.higher_is_worse else f"{base} - {now}"
        return diff if self.max_delta is not None else f"({diff}) / {base}"

    def describe(self) -> str:
        if self.bound is not None:
            return f"{self.type}: {self.label} {'<=' if self.higher_is_worse else '>='} {self.bound:g}"
        bound = f"{self.max_delta:g}" if self.max_delta is not None else f"{self.max_rel * 100:g}%"
        if self.direction == "both":
            return f"{self.type}: |{self._subject()}| <= {bound}"
        return f"{self.type}: {self._subject()} <= {bound} (only worse counts)"

    def short(self) -> str:
        if self.bound is not None:
            return f"{self.type}{'≤' if self.higher_is_worse else '≥'}{self.bound:g}"
        sign = "±" if self.direction == "both" else "+"
        width = f"{self.max_delta:g}" if self.max_delta is not None else f"{self.max_rel:.2%}"
        return f"{self.type}{':' + self.ref if self.ref else ''}{sign}{width}"

    def check(self, value: float | None, recorded: float | None, session: Mapping[str, float]) -> RuleResult:
        """``value``: this entry's metric; ``recorded``: the recorded one; ``session``: other entries' this session."""
        if value is None:
            return RuleResult(self, False, f"[FAIL] {self.describe()}: no comparison with the reference measured")
        if self.bound is not None:
            passed = math.isfinite(value) and (value <= self.bound if self.higher_is_worse else value >= self.bound)
            return RuleResult(self, passed, f"[{'PASS' if passed else 'FAIL'}] {self.describe()}: got {value:.6f}")
        base = recorded if self.ref is None else session.get(self.ref)
        if base is None:
            return RuleResult(self, False, f"[FAIL] {self.describe()}: no {self._base_name()} value")
        worse = (value - base) if self.higher_is_worse or self.direction == "both" else (base - value)
        if self.max_delta is not None:
            shown, bound, text = worse, self.max_delta, f"{worse:+.6f}"
        else:
            shown = worse / base if base else (0.0 if worse == 0 else math.copysign(math.inf, worse))
            bound, text = self.max_rel, f"{shown:+.4%}"
        measured = abs(shown) if self.direction == "both" else shown
        passed = math.isfinite(measured) and measured <= bound
        note = "" if self.ref is None else f"; {self.ref} measured {base:.6f} in this session"
        return RuleResult(self, passed, f"[{'PASS' if passed else 'FAIL'}] {self.describe()}: got {text}{note}")

    @classmethod
    def parse(cls, v: Validator, node: Mapping[str, Any], keypath: str) -> _ComparisonRule:
        max_delta, max_rel = cls._bounds(v, node, keypath)
        bound = v.number(node, cls.bound_key, keypath)
        if sum(x is not None for x in (bound, max_delta, max_rel)) != 1:
            v.err(keypath, f"a {cls.type} rule takes exactly one of {cls.bound_key} / max_delta / max_rel", node)
        if bound is not None and ("ref" in node or "direction" in node):
            v.err(keypath, f"{cls.bound_key} is a bound on this entry alone: it takes no ref and no direction", node)
        if cls.bound_key == "min_agreement" and bound is not None and bound > 1:
            v.err(f"{keypath}.min_agreement", f"expected a fraction in [0, 1], got {bound:g}", node, "min_agreement")
        ref = v.string(node, "ref", keypath) if "ref" in node else None
        direction = v.choice(node, "direction", keypath, DIRECTIONS, "both" if ref is None else "worse")
        return cls(bound=bound, max_delta=max_delta, max_rel=max_rel, ref=ref, direction=direction)


@dataclass(frozen=True, kw_only=True)
class KldRule(_ComparisonRule):
    """The mean KL divergence against the entry's reference: ``max_mean``, or ``max_delta``/``max_rel``
    around the recorded mean KLD (or, with ``ref``, around that entry's this session)."""

    type: ClassVar[str] = "kld"
    metric: ClassVar[str] = "kld"
    keys: ClassVar[frozenset[str]] = frozenset({"max_mean", "max_delta", "max_rel", "direction", "ref"})
    label: ClassVar[str] = "mean KLD"
    bound_key: ClassVar[str] = "max_mean"
    higher_is_worse: ClassVar[bool] = True


@dataclass(frozen=True, kw_only=True)
class Top1Rule(_ComparisonRule):
    """The top-1 agreement with the entry's reference: ``min_agreement``, or ``max_delta``/``max_rel``
    around the recorded agreement (or, with ``ref``, around that entry's this session)."""

    type: ClassVar[str] = "top1"
    metric: ClassVar[str] = "top1"
    keys: ClassVar[frozenset[str]] = frozenset({"min_agreement", "max_delta", "max_rel", "direction", "ref"})
    label: ClassVar[str] = "agreement"
    bound_key: ClassVar[str] = "min_agreement"
    higher_is_worse: ClassVar[bool] = False

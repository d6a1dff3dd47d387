"""Tolerance rules: one class per rule type. All rules of an entry must pass.

* :class:`AbsoluteRule` (``type: absolute``): ``ppl - recorded`` within ``max_delta``;
* :class:`RelativeRule` (``type: relative``): ``(ppl - recorded) / recorded`` within ``max_rel``;
* :class:`RelationalRule` (``type: relational``): ``ppl - ppl(ref)`` (``ref`` measured in the same
  session) within ``max_delta`` (or ``max_rel`` of the reference);
* :class:`SpeedRule` (``type: speed``): the evaluation's tokens/s at least ``min_ratio`` times the
  tokens/s of ``ref``, measured in the same session on the same device (a same-run ratio survives a
  noisy shared machine where absolute times do not). Its ``metric`` is ``tokens_per_s``: the verdict
  hands it tokens/s instead of perplexities;
* :class:`~pplgate.gate.kld_rules.KldRule` (``type: kld``) and :class:`~pplgate.gate.kld_rules.Top1Rule`
  (``type: top1``), for an entry that names a ``reference:``: its mean KL divergence / top-1 agreement
  against that reference, either bounded (``max_mean`` / ``min_agreement``), or within
  ``max_delta``/``max_rel`` of the recorded value, or (with ``ref: <entry>``) of another entry's value
  measured in the same session against the same reference. A higher KLD and a lower agreement are worse.

``direction: both`` bounds the absolute value; ``worse`` only bounds increases (a lower
perplexity always passes). Defaults: ``both`` for absolute/relative (a deterministic number
that moves in either direction means something changed), ``worse`` for relational.

A new rule type is one subclass of :class:`~pplgate.gate.rule_base.Rule` (``type``, ``keys``, ``describe``,
``short``, ``check``, ``parse``; ``inputs`` when it reads another metric than the ppl) and one registration in
:data:`RULE_TYPES`; the schema validation in :mod:`pplgate.gate.spec` looks rule types up there and nowhere else,
and the verdict calls ``rule.judge(...)`` without knowing the type. Each type's ``parse`` reports errors through
the :class:`~pplgate.gate.validator.Validator` it is given.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pplgate.gate.kld_rules import KldRule, Top1Rule
from pplgate.gate.rule_base import DIRECTIONS, Rule, RuleResult
from pplgate.gate.validator import Validator

__all__ = [
    "DIRECTIONS",
    "RULE_KEYS",
    "RULE_TYPES",
    "AbsoluteRule",
    "KldRule",
    "RelationalRule",
    "RelativeRule",
    "Rule",
    "RuleResult",
    "SpeedRule",
    "Top1Rule",
    "parse_rule",
]


@dataclass(frozen=True, kw_only=True)
class _BoundedRule(Rule):
    """A bound on ``ppl - base`` (``max_delta``) or on ``(ppl - base) / base`` (``max_rel``)."""

    max_delta: float | None = None
    max_rel: float | None = None

    @abstractmethod
    def _base(self, recorded: float | None, session_ppls: Mapping[str, float]) -> float | None:
        """The value the measured ppl is compared with (None: not available)."""

    @abstractmethod
    def _subject(self) -> str:
        """The bounded expression, e.g. ``ppl - recorded``."""

    def _note(self, base: float) -> str:
        """Appended to the result line (where the base value came from)."""
        return ""

    def describe(self) -> str:
        bound = f"{self.max_delta:g}" if self.max_delta is not None else f"{self.max_rel * 100:g}%"
        if self.direction == "both":
            return f"{self.type}: |{self._subject()}| <= {bound}"
        return f"{self.type}: {self._subject()} <= {bound} (only worse counts)"

    def _short_bound(self) -> str:
        sign = "±" if self.direction == "both" else "+"
        return sign + (f"{self.max_delta:g}" if self.max_delta is not None else f"{self.max_rel:.2%}")

    def short(self) -> str:
        return self._short_bound()

    def check(self, ppl: float, recorded: float | None, session_ppls: Mapping[str, float]) -> RuleResult:
        base = self._base(recorded, session_ppls)
        if base is None:
            return RuleResult(self, False, f"[FAIL] {self.describe()}: no reference value")
        diff = ppl - base
        if self.max_delta is not None:
            value, bound, fmt = diff, self.max_delta, "{:+.6f}"
        else:
            value, bound, fmt = diff / base, self.max_rel, "{:+.4%}"
        measured = abs(value) if self.direction == "both" else value
        passed = math.isfinite(measured) and measured <= bound
        text = f"[{'PASS' if passed else 'FAIL'}] {self.describe()}: got {fmt.format(value)}{self._note(base)}"
        return RuleResult(self, passed, text)


@dataclass(frozen=True, kw_only=True)
class AbsoluteRule(_BoundedRule):
    """``ppl - recorded`` within ``max_delta``."""

    type: ClassVar[str] = "absolute"
    keys: ClassVar[frozenset[str]] = frozenset({"max_delta", "direction"})

    def _base(self, recorded: float | None, session_ppls: Mapping[str, float]) -> float | None:
        return recorded

    def _subject(self) -> str:
        return "ppl - recorded"

    @classmethod
    def parse(cls, v: Validator, node: Mapping[str, Any], keypath: str) -> AbsoluteRule:
        max_delta, max_rel = cls._bounds(v, node, keypath)
        if max_delta is None or max_rel is not None:
            v.err(keypath, "an absolute rule takes max_delta (and no max_rel)", node)
        cls._no_ref(v, node, keypath)
        return cls(max_delta=max_delta, direction=cls._direction(v, node, keypath))


@dataclass(frozen=True, kw_only=True)
class RelativeRule(_BoundedRule):
    """``(ppl - recorded) / recorded`` within ``max_rel``."""

    type: ClassVar[str] = "relative"
    keys: ClassVar[frozenset[str]] = frozenset({"max_rel", "direction"})

    def _base(self, recorded: float | None, session_ppls: Mapping[str, float]) -> float | None:
        return recorded

    def _subject(self) -> str:
        return "(ppl - recorded) / recorded"

    @classmethod
    def parse(cls, v: Validator, node: Mapping[str, Any], keypath: str) -> RelativeRule:
        max_delta, max_rel = cls._bounds(v, node, keypath)
        if max_rel is None or max_delta is not None:
            v.err(keypath, "a relative rule takes max_rel (and no max_delta)", node)
        cls._no_ref(v, node, keypath)
        return cls(max_rel=max_rel, direction=cls._direction(v, node, keypath))


@dataclass(frozen=True, kw_only=True)
class RelationalRule(_BoundedRule):
    """``ppl - ppl[ref]`` (``max_delta``) or ``(ppl - ppl[ref]) / ppl[ref]`` (``max_rel``), ``ref``
    being another entry of the profile measured in the same session."""

    type: ClassVar[str] = "relational"
    keys: ClassVar[frozenset[str]] = frozenset({"max_delta", "max_rel", "direction", "ref"})
    needs_recorded: ClassVar[bool] = False

    ref: str
    direction: str = "worse"

    @property
    def refs(self) -> tuple[str, ...]:
        return (self.ref,)

    def _base(self, recorded: float | None, session_ppls: Mapping[str, float]) -> float | None:
        return session_ppls.get(self.ref)

    def _subject(self) -> str:
        if self.max_delta is not None:
            return f"ppl - ppl[{self.ref}]"
        return f"(ppl - ppl[{self.ref}]) / ppl[{self.ref}]"

    def _note(self, base: float) -> str:
        return f"; {self.ref} measured {base:.6f} in this session"

    def short(self) -> str:
        return f"{self.ref}{self._short_bound()}"

    @classmethod
    def parse(cls, v: Validator, node: Mapping[str, Any], keypath: str) -> RelationalRule:
        max_delta, max_rel = cls._bounds(v, node, keypath)
        if (max_delta is None) == (max_rel is None):
            v.err(keypath, "a relational rule takes exactly one of max_delta / max_rel", node)
        ref = v.string(node, "ref", keypath)
        return cls(ref=ref, max_delta=max_delta, max_rel=max_rel, direction=cls._direction(v, node, keypath))


@dataclass(frozen=True, kw_only=True)
class SpeedRule(Rule):
    """``tokens/s >= min_ratio * tokens/s[ref]``, ``ref`` being another entry of the profile measured in the
    same session (so on the same device, in the same process); the ratio is recorded with the result."""

    type: ClassVar[str] = "speed"
    keys: ClassVar[frozenset[str]] = frozenset({"ref", "min_ratio"})
    needs_recorded: ClassVar[bool] = False
    metric: ClassVar[str] = "tokens_per_s"

    ref: str
    min_ratio: float
    direction: str = "worse"  # only slower fails

    @property
    def refs(self) -> tuple[str, ...]:
        return (self.ref,)

    def describe(self) -> str:
        return f"speed: tokens/s >= {self.min_ratio:g} x tokens/s[{self.ref}] (same session, same device)"

    def short(self) -> str:
        return f"{self.ref} tok/s x{self.min_ratio:g}"

    def inputs(self, measured: Any, record: Any) -> tuple[float | None, float | None]:
        return measured.tokens_per_s, None  # None (not measured): FAIL

    def check(self, ppl: float, recorded: float | None, session_ppls: Mapping[str, float]) -> RuleResult:
        """``ppl`` and ``session_ppls`` are tokens/s here (``metric``): this entry's and the session's."""
        speed, base = ppl, session_ppls.get(self.ref)
        if speed is None or base is None or not (math.isfinite(speed) and math.isfinite(base)) or base <= 0:
            return RuleResult(self, False, f"[FAIL] {self.describe()}: no tokens/s for this entry or for {self.ref}")
        ratio = speed / base
        passed = ratio >= self.min_ratio
        text = (
            f"[{'PASS' if passed else 'FAIL'}] {self.describe()}: got {ratio:.3f} "
            f"({speed:,.1f} tok/s vs {self.ref} {base:,.1f} tok/s in this session)"
        )
        return RuleResult(self, passed, text, value=round(ratio, 4))

    @classmethod
    def parse(cls, v: Validator, node: Mapping[str, Any], keypath: str) -> SpeedRule:
        foreign = sorted(set(node) - cls.keys - {"type"})
        if foreign:
            v.err(keypath, f"a speed rule takes ref and min_ratio (not {', '.join(foreign)})", node)
        min_ratio = v.number(node, "min_ratio", keypath)
        if min_ratio is None:
            v.err(keypath, "a speed rule takes min_ratio (e.g. 0.8: at least 80% of ref's tokens/s)", node)
        ref = v.string(node, "ref", keypath)
        return cls(ref=ref, min_ratio=min_ratio)


RULE_TYPES: dict[str, type[Rule]] = {
    cls.type: cls for cls in (AbsoluteRule, RelativeRule, RelationalRule, SpeedRule, KldRule, Top1Rule)
}
# every key some rule type takes: a key outside it is reported before the rule type is looked at (a key
# of another type, e.g. max_rel on an absolute rule, gets that type's own message)
RULE_KEYS = frozenset({"type"}).union(*(cls.keys for cls in RULE_TYPES.values()))


def parse_rule(v: Validator, node: Any, keypath: str, parent: Any, idx: int) -> Rule:
    """One ``tolerance:`` list item -> its :class:`Rule` subclass (errors name the key path and line)."""
    node = v.mapping(node, keypath, parent, idx)
    v.keys(node, RULE_KEYS, keypath, required=("type",))
    kind = node["type"]
    if not isinstance(kind, str) or kind not in RULE_TYPES:
        v.err(f"{keypath}.type", f"unknown rule type {kind!r} (allowed: {', '.join(RULE_TYPES)})", node, "type")
    return RULE_TYPES[kind].parse(v, node, keypath)

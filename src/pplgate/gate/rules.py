"""Tolerance rules: one class per rule type. All rules of an entry must pass.

* :class:`AbsoluteRule` (``type: absolute``): ``ppl - recorded`` within ``max_delta``;
* :class:`RelativeRule` (``type: relative``): ``(ppl - recorded) / recorded`` within ``max_rel``;
* :class:`RelationalRule` (``type: relational``): ``ppl - ppl(ref)`` (``ref`` measured in the same
  session) within ``max_delta`` (or ``max_rel`` of the reference);
* :class:`KldRule` (``type: kld``) and :class:`Top1Rule` (``type: top1``), for an entry that names a
  ``reference:``: its mean KL divergence / top-1 agreement against that reference, either bounded
  (``max_mean`` / ``min_agreement``), or within ``max_delta``/``max_rel`` of the recorded value, or
  (with ``ref: <entry>``) of another entry's value measured in the same session against the same
  reference. A higher KLD and a lower agreement are worse.

``direction: both`` bounds the absolute value; ``worse`` only bounds increases (a lower
perplexity always passes). Defaults: ``both`` for absolute/relative (a deterministic number
that moves in either direction means something changed), ``worse`` for relational.

A new rule type is a subclass of :class:`Rule` (``type``, ``keys``, ``describe``, ``short``,
``check``, ``parse``) added to :data:`RULE_TYPES`; the schema validation in :mod:`pplgate.gate.spec`
looks rule types up there and nowhere else; each type's ``parse`` reports errors through the
:class:`~pplgate.gate.validator.Validator` it is given. A rule's ``metric`` (``ppl``, ``kld``, ``top1``) picks the
values the verdict passes to ``check``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pplgate.gate.validator import Validator

DIRECTIONS = ("both", "worse")


@dataclass(frozen=True)
class RuleResult:
    rule: Rule
    passed: bool
    text: str

    def to_dict(self) -> dict[str, Any]:
        """The record's form of one rule outcome (travels to the controller and into JSON)."""
        return {"text": self.text, "passed": self.passed, "type": self.rule.type}


@dataclass(frozen=True, kw_only=True)
class Rule(ABC):
    """One tolerance rule of an entry (abstract: see the subclasses)."""

    type: ClassVar[str]  # the YAML ``type:`` value
    metric: ClassVar[str] = "ppl"  # what the rule judges: ppl, kld (mean KLD) or top1 (top-1 agreement)
    keys: ClassVar[frozenset[str]]  # the YAML keys this rule type takes (besides ``type``)
    needs_recorded: ClassVar[bool] = True  # compares against the recorded baseline (else: this session)

    direction: str = "both"

    @property
    def refs(self) -> tuple[str, ...]:
        """Entries of the same profile this rule needs measured in the session."""
        return ()

    @abstractmethod
    def describe(self) -> str:
        """``absolute: |ppl - recorded| <= 0.01``: the rule as a sentence (in every result line)."""

    @abstractmethod
    def short(self) -> str:
        """``±0.01``: the rule in a table cell."""

    @abstractmethod
    def check(self, ppl: float, recorded: float | None, session_ppls: Mapping[str, float]) -> RuleResult:
        """Judge the measured ``ppl`` against the ``recorded`` one and/or the ppls measured this session."""

    @classmethod
    @abstractmethod
    def parse(cls, v: Validator, node: Mapping[str, Any], keypath: str) -> Rule:
        """Build the rule from its validated YAML mapping (errors through ``v``)."""

    # ---- helpers shared by the subclasses' parse()
    @classmethod
    def _bounds(cls, v: Validator, node: Mapping[str, Any], keypath: str) -> tuple[float | None, float | None]:
        return v.number(node, "max_delta", keypath), v.number(node, "max_rel", keypath)

    @classmethod
    def _no_ref(cls, v: Validator, node: Mapping[str, Any], keypath: str) -> None:
        if "ref" in node:
            v.err(f"{keypath}.ref", f"only relational rules take ref (this is {cls.type})", node, "ref")

    @classmethod
    def _direction(cls, v: Validator, node: Mapping[str, Any], keypath: str) -> str:
        return v.choice(node, "direction", keypath, DIRECTIONS, cls.__dataclass_fields__["direction"].default)


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


RULE_TYPES: dict[str, type[Rule]] = {
    cls.type: cls for cls in (AbsoluteRule, RelativeRule, RelationalRule, KldRule, Top1Rule)
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

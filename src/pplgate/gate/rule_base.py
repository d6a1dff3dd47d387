"""The base of the tolerance rules: :class:`Rule` (one per rule type) and :class:`RuleResult`.

The rule types themselves are in :mod:`pplgate.gate.rules` (ppl and speed rules, :data:`RULE_TYPES`,
``parse_rule``) and :mod:`pplgate.gate.kld_rules` (``kld`` / ``top1``, against an entry's reference);
:mod:`pplgate.gate.rules` re-exports these names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pplgate.gate.validator import Validator

DIRECTIONS = ("both", "worse")

MAX_REL = 10.0  # a relative bound above 1000% checks nothing: refused as a typo (1e308 was shown as ±inf%)


@dataclass(frozen=True)
class RuleResult:
    rule: Rule
    passed: bool
    text: str
    value: float | None = None  # what the rule measured, where it is one number (a speed ratio)

    def to_dict(self) -> dict[str, Any]:
        """The record's form of one rule outcome (travels to the controller and into JSON)."""
        out: dict[str, Any] = {"text": self.text, "passed": self.passed, "type": self.rule.type}
        if self.value is not None:
            out["value"] = self.value
        return out


@dataclass(frozen=True, kw_only=True)
class Rule(ABC):
    """One tolerance rule of an entry (abstract: see the subclasses)."""

    type: ClassVar[str]  # the YAML ``type:`` value
    keys: ClassVar[frozenset[str]]  # the YAML keys this rule type takes (besides ``type``)
    needs_recorded: ClassVar[bool] = True  # compares against the recorded baseline (else: this session)
    # what the rule judges, i.e. what the verdict hands check(): ppl, tokens_per_s (the evaluation's speed),
    # kld (the mean KL divergence against the entry's reference) or top1 (the top-1 agreement with it)
    metric: ClassVar[str] = "ppl"

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
        """Judge the measured ``ppl`` (the value of the rule's ``metric``) against the ``recorded`` one and/or
        the values measured this session."""

    def inputs(self, measured: Any, record: Any) -> tuple[float | None, float | None]:
        """``(value, recorded)`` of the rule's metric, read from the verdict's measurement and record (``ppl``
        here; a rule on another metric reads its own)."""
        return measured.ppl, record.baseline

    def judge(self, measured: Any, record: Any, values: Mapping[str, Mapping[str, float]]) -> RuleResult:
        """:meth:`check` on the rule's own metric: this entry's value, the recorded one, and ``values[metric]``
        (the entries the rule names, measured this session)."""
        return self.check(*self.inputs(measured, record), values.get(self.metric, {}))  # type: ignore[arg-type]

    @classmethod
    @abstractmethod
    def parse(cls, v: Validator, node: Mapping[str, Any], keypath: str) -> Rule:
        """Build the rule from its validated YAML mapping (errors through ``v``)."""

    # ---- helpers shared by the subclasses' parse()
    @classmethod
    def _bounds(cls, v: Validator, node: Mapping[str, Any], keypath: str) -> tuple[float | None, float | None]:
        max_rel = v.number(node, "max_rel", keypath)
        if max_rel is not None and max_rel > MAX_REL:
            v.err(
                f"{keypath}.max_rel",
                f"{max_rel:g} is no tolerance (a relative bound above {MAX_REL:g} = {MAX_REL:.0%} passes any "
                "number); write the change you accept as a fraction, e.g. 0.01 for 1%",
                node,
                "max_rel",
            )
        return v.number(node, "max_delta", keypath), max_rel

    @classmethod
    def _no_ref(cls, v: Validator, node: Mapping[str, Any], keypath: str) -> None:
        if "ref" in node:
            v.err(f"{keypath}.ref", f"only relational rules take ref (this is {cls.type})", node, "ref")

    @classmethod
    def _direction(cls, v: Validator, node: Mapping[str, Any], keypath: str) -> str:
        return v.choice(node, "direction", keypath, DIRECTIONS, cls.__dataclass_fields__["direction"].default)

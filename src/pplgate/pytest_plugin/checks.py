"""``ppl_regression.check``: a test function's perplexity check, judged like a collected gate entry.

The entry is ``tests.<name>`` of the test module's baseline file: ``<baselines dir>/<module stem>.yaml``
(the gate's ``--baselines-dir``, default ``<rootdir>/baselines``; the same directory the collector
reads, so one file can hold collected ``profiles:`` and checked ``tests:`` entries side by side), or
the file named by ``baseline=`` (relative to the baselines dir). The measuring goes through the gate
session's Measurer, the verdict through :meth:`GateSession.verdict` (the same
:func:`~pplgate.gate.verdict.judge` and messages), the record onto the test's report, and the write
into :meth:`GateSession.finish` (one store, one update flow, one report).

A missing entry (or one without ``recorded:``) is measured, queued for writing and fails the test, as
pytest-regressions does: the end of the session writes it, and the next run compares against it.

Designed to grow: a ``reference=`` keyword (KL divergence against a reference model's logits) can be
added to :meth:`PplRegression.check` without changing its other arguments (all keyword-only).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pplgate.errors import BaselineError, PplgateError
from pplgate.gate import reports
from pplgate.gate.kld_rules import COMPARISON_METRICS
from pplgate.gate.record import GateRecord, Status
from pplgate.gate.rules import Rule, parse_rule
from pplgate.gate.spec import EntrySpec, parse_baseline
from pplgate.gate.store import TESTS
from pplgate.gate.validator import NAME_RE, Validator
from pplgate.gate.verdict import Measured, Target, is_partial
from pplgate.protocol import DEFAULT_SEQLEN
from pplgate.pytest_plugin.items import gate_of, known_kinds
from pplgate.pytest_plugin.records import CHECK_FAILED_KEY, CHECKS_KEY, measured_of, report_model_name

if TYPE_CHECKING:
    from pplgate.pytest_plugin.session import GateSession

Tolerance = float | Mapping[str, Any] | Sequence[Mapping[str, Any]]


@dataclass
class PplModel:
    """A model to measure: ``source`` in variant ``kind(params)`` on ``device``, as the Measurer prepared it.

    ``model`` and ``tokenizer`` are there to inspect or use; a model from ``ppl_model`` is the session's
    shared float model (do not change it in place: ``ppl_variant`` makes changed copies).
    ``ppl_regression.check`` measures the request (``source``, ``kind``, ``params``, ``device``), so a
    change made to ``model`` after the fixture returned it is not what decides the number.
    """

    source: Any  # pplgate.models.source.ModelSource
    kind: str
    params: dict[str, Any]
    device: str
    tokenizer_ref: str | None
    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)

    @property
    def name(self) -> str:
        """``<model>:<kind>``, for messages."""
        return f"{self.source.short_name()}:{self.kind}"


class CheckError(PplgateError, pytest.fail.Exception):
    """``ppl_regression.check`` was called in a way that cannot work (says what to change).

    Also a ``pytest.fail`` outcome without a Python traceback: the failing test shows this one sentence, not
    25 lines through the fixture's frames. ``except Exception`` and ``pytest.raises(CheckError)`` still catch it.
    """

    def __init__(self, message: str) -> None:
        pytest.fail.Exception.__init__(self, f"CheckError: {message}", pytrace=False)


def baseline_path(gate: GateSession, item: pytest.Item, baseline: str | os.PathLike[str] | None) -> Path:
    """The entry's file: ``baseline`` (absolute, or relative to the baselines dir), else ``<module stem>.yaml``
    in the baselines dir."""
    if baseline is None:
        return gate.baselines_dir() / f"{item.path.stem}.yaml"
    p = Path(baseline).expanduser()
    return p if p.is_absolute() else gate.baselines_dir() / p


def code_rules(path: Path, name: str, tolerance: Tolerance) -> list[Rule]:
    """``tolerance=`` as rules: a number is ``{type: absolute, max_delta: number}``; a mapping is one rule and
    a list several, written as in a baseline file."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, Mapping, list, tuple)):
        raise CheckError(f"check(name={name!r}): tolerance={tolerance!r}: give a number, a rule mapping or a list")
    if isinstance(tolerance, (int, float)):
        items: list[Any] = [{"type": "absolute", "max_delta": float(tolerance)}]
    else:
        items = [tolerance] if isinstance(tolerance, Mapping) else list(tolerance)
    try:
        return [
            parse_rule(Validator(path), dict(r) if isinstance(r, Mapping) else r, "", items, i)
            for i, r in enumerate(items)
        ]
    except BaselineError as exc:
        raise CheckError(f"check(name={name!r}): tolerance={tolerance!r}: {exc.args[0].split(': ', 2)[-1]}") from None


KEYWORDS = ("name", "tolerance", "max_windows", "seqlen", "batch_size", "baseline")


class PplRegression:
    """The ``ppl_regression`` fixture's object: :meth:`check` (one call per entry name and session)."""

    def __init__(self, item: pytest.Item) -> None:
        self.item = item

    def check(
        self,
        subject: PplModel,
        *misplaced: Any,
        name: str | None = None,
        tolerance: Tolerance | None = None,
        max_windows: int | None = None,
        seqlen: int = DEFAULT_SEQLEN,
        batch_size: int = 1,
        baseline: str | os.PathLike[str] | None = None,
        **unknown: Any,
    ) -> GateRecord:
        """Measure ``subject`` (a ``ppl_model``/``ppl_variant`` result) with the canonical protocol and judge it
        against entry ``tests.<name>`` of the module's baseline file; returns the record of a pass.

        ``tolerance``: the rules, unless the entry has a ``tolerance:`` list (exactly one of the two);
        relational rules (``{type: relational, ref: OTHER, max_rel: 0.2}``) name entries of the same file
        checked earlier in this session (on this xdist worker). ``max_windows``: score only the first K
        windows (the entry records K). Fails the test like a collected entry: a regression, protocol
        drift, a missing entry (recorded now: re-run), or an inconsistent recorded block.
        """
        __tracebackhide__ = True
        gate: GateSession = gate_of(self.item.config)  # type: ignore[assignment]
        usage = ", ".join(KEYWORDS)
        if misplaced:
            raise CheckError(
                f"check() takes the model, then keywords only ({usage}); got {len(misplaced)} more positional "
                f"argument(s) ({', '.join(repr(a) for a in misplaced)[:120]}): write check(model, name=..., "
                "tolerance=...)"
            )
        if unknown:
            raise CheckError(f"check(name={name!r}): unknown keyword(s) {sorted(unknown)}; it takes {usage}")
        if name is None:
            raise CheckError(f"check(): name= is required: the entry's name in the baseline file's tests: ({usage})")
        if not isinstance(subject, PplModel):
            raise CheckError(
                f"check(name={name!r}): expected what ppl_model(...) or ppl_variant(...) returns, got "
                f"{type(subject).__name__}; load the model with ppl_model and quantize it with ppl_variant "
                "(your own function: ppl_variant(base, 'user', {'entry': 'package.module:function'}))"
            )
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise CheckError(f"check(name={name!r}): a name may only contain letters, digits and _.+-")
        path = baseline_path(gate, self.item, baseline)
        key = (str(path), name)
        if key in gate.checked:
            where = "this test" if gate.checked[key] == self.item.nodeid else gate.checked[key]
            raise CheckError(
                f"check(name={name!r}): entry {name!r} of {path} was already checked in this session by {where}; "
                "each check needs its own name (in a parametrized test, put the parameter in it: "
                f"name=f'{name}-{{kind}}')"
            )
        entry = self._entry(path, name, tolerance, subject)  # a refused call does not take the name
        gate.checked[key] = self.item.nodeid
        gate.refuse_partial_update(TESTS, max_windows)
        m = gate.measurer.measure(
            subject.source,
            kind=subject.kind,
            params=subject.params,
            device=subject.device,
            tokenizer=subject.tokenizer_ref,
            seqlen=seqlen,
            batch_size=batch_size,
            max_windows=max_windows,
            label=f"{subject.source.short_name()} {name}",
        )
        target = Target(
            nodeid=self.item.nodeid,
            name=f"{name} ({self.item.nodeid})",
            file=str(path),
            model=report_model_name(subject.source),
            source=subject.source.describe(),
            profile=TESTS,
            device=subject.device,
            seqlen=seqlen,
            section=TESTS,
        )
        # a first run records the entry and fails, as pytest-regressions does (never from a partial run)
        first = entry.recorded is None and not gate.update and not is_partial(gate.max_windows_override, max_windows)

        others = self._others(gate, path, entry)  # relational rules: entries of this file checked earlier
        rec = gate.verdict(target, entry, m, others, max_windows, update=first or None)
        if first and rec.status == Status.CREATED:
            rec.status = Status.MISSING
            where = reports.relpath(str(path), self.item.config.rootpath)
            rec.message = (
                f"pplgate: {target.name}\n  measured ppl {rec.ppl:.6f}: no baseline was recorded for entry "
                f"{name!r} in {where}.\n  Recorded it now (written at the end of this session); re-run the "
                "test to compare against it, and commit the file."
            )
        gate.checked_measured[key] = m
        self.item.stash.setdefault(CHECKS_KEY, []).append(rec)
        self.item.user_properties.extend(reports.junit_properties(rec))
        if rec.message is not None:
            self.item.stash[CHECK_FAILED_KEY] = True
            pytest.fail(rec.message, pytrace=False)
        return rec

    def _entry(self, path: Path, name: str, tolerance: Tolerance | None, subject: PplModel) -> EntrySpec:
        """The file's entry (or a new one) with the rules from the code or the file (exactly one of the two)."""
        spec = parse_baseline(path, known_kinds=known_kinds()) if path.exists() else None
        entry = spec.tests.get(name) if spec is not None else None
        if tolerance is not None and entry is not None and entry.rules:
            raise CheckError(
                f"check(name={name!r}): the tolerance is given twice, as tolerance= and in {path} (tests.{name}."
                "tolerance); keep one of them"
            )
        if tolerance is None and (entry is None or not entry.rules):
            raise CheckError(
                f"check(name={name!r}): no tolerance: pass tolerance= (e.g. tolerance=0.001, an absolute bound on "
                f"the ppl) or write a tolerance: list in {path} under tests.{name}"
            )
        rules = code_rules(path, name, tolerance) if tolerance is not None else entry.rules  # type: ignore[union-attr]
        for rule in rules:
            if name in rule.refs:
                raise CheckError(f"check(name={name!r}): a relational rule cannot compare the entry with itself")
            if rule.metric in COMPARISON_METRICS:
                raise CheckError(
                    f"check(name={name!r}): a {rule.type} rule compares with an entry's reference, which a check "
                    "has none of (entries of profiles: name one with reference:)"
                )
        base = entry or EntrySpec(name=name, kind="?", params={}, rules=[], fingerprint=None, recorded=None)
        return dataclasses.replace(base, kind=subject.kind, params=dict(subject.params), rules=rules)

    def _others(self, gate: GateSession, path: Path, entry: EntrySpec) -> dict[str, Measured]:
        out = {}
        for ref in entry.refs:
            if (str(path), ref) not in gate.checked_measured:
                raise CheckError(
                    f"check(name={entry.name!r}): a relational rule compares with {ref!r}, which was not checked "
                    f"in this session before it (on this xdist worker); check {ref!r} first, in this test or an "
                    "earlier one of the same xdist_group"
                )
            out[ref] = measured_of(gate.checked_measured[(str(path), ref)], None)
        return out

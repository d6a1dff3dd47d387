"""The verdict on one gate entry: :func:`judge` compares a measurement with its baseline entry and
returns a :class:`GateRecord` (status, the numbers for the reports, the failure message, the queued
update). Pure: the caller measures, raises, writes and reports.

The update flow is written once, in :func:`judge` (pytest-regressions' ``perform_regression_check``
is the model)::

    nothing recorded      -> MISSING, or with --update-baselines: CREATED (queued)
    window override > rec -> DRIFT (``--pplgate-max-windows K`` exceeds the recorded windows)
    fingerprint changed   -> DRIFT, or with --update-baselines --force-update: UPDATED (queued)
    --update-baselines    -> UPDATED (queued), unless a rule against this session's entries fails, or
                             the measured numbers are not finite: FAIL
    all rules pass        -> PASS, unless the recorded block contradicts itself: INCONSISTENT
    otherwise             -> FAIL (worse, or a relational rule) or IMPROVED (better, outside tolerance)

A recorded block contradicts itself (:func:`recorded_problems`: a hand edit) when its ppl is not
``exp(mean(window_nlls))`` within the storage rounding, or it holds another number of window NLLs than
its fingerprint's ``n_windows``. Such an entry never passes, and ``--update-baselines`` rewrites it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pplgate.gate import detect
from pplgate.gate import kld as kld_gate
from pplgate.gate import layers as where
from pplgate.gate import verdict_text as text
from pplgate.gate.drift import compare_fingerprints, describe_drift, drift_lines
from pplgate.gate.kld_rules import COMPARISON_METRICS
from pplgate.gate.record import FAILING, MOVED, GateRecord, Status
from pplgate.gate.rules import RuleResult
from pplgate.gate.spec import EntrySpec, Recorded
from pplgate.gate.stats import describe_ppl, paired_stats, ppl_of
from pplgate.gate.store import EntryUpdate

__all__ = [
    "FAILING", "GateRecord", "Measured", "Status", "Target", "is_partial", "judge",
    "measured_record", "new_record", "partial_update_refusal", "recorded_problems", "rerun_command", "values_of",
]  # fmt: skip

# ppl and window NLLs are stored to 6 decimals, so exp(mean of the stored NLLs) reproduces the stored ppl
# to within 5e-7 relative + 5e-7 absolute; these bounds leave a margin of 2-4x over that rounding
HAND_EDIT_REL, HAND_EDIT_ABS = 2e-6, 1e-6


@dataclass(frozen=True)
class Target:
    """Which test is judged, and the facts its failure header names."""

    nodeid: str
    name: str  # the test name: <model>[<profile>-<entry>]
    file: str
    model: str
    source: str  # the model source, described (hub id, directory, GGUF file)
    profile: str
    device: str
    seqlen: int
    section: str = "profiles"  # ``tests``: an entry of the ppl_regression fixture (created on first run)


@dataclass(frozen=True)
class Measured:
    """One entry's measurement, as the verdict needs it."""

    ppl: float
    window_nlls: Sequence[float]
    n_windows: int
    n_windows_total: int
    fingerprint: Mapping[str, Any]
    origin: str
    wall_time_s: float
    prepare_time_s: float
    tokens_per_s: float | None = None
    phases: Mapping[str, float] | None = None  # seconds per phase (load_s, prepare_s, tokenize_s, evaluate_s)
    kld: kld_gate.KldMeasured | None = None  # the comparison with the entry's reference, if it names one
    layers: Mapping[str, float] | None = None  # per-module output error vs that reference (gate.layers)


# --------------------------------------------------------------------------- judging


def values_of(others: Mapping[str, Measured]) -> dict[str, dict[str, Any]]:
    """Per metric, the values of measured entries, as :func:`judge`'s ``others`` takes them."""
    klds = {name: m.kld for name, m in others.items() if m.kld is not None}
    return {
        "ppl": {name: m.ppl for name, m in others.items()},
        "tokens_per_s": {name: m.tokens_per_s for name, m in others.items() if m.tokens_per_s is not None},
        "kld": {name: k.mean_kld for name, k in klds.items()},
        "top1": {name: k.top1_agreement for name, k in klds.items()},
        "window_nlls": {name: list(m.window_nlls) for name, m in others.items()},  # for gate.detect
    }


def new_record(target: Target, entry: EntrySpec, status: Status) -> GateRecord:
    """The record of a gate test before anything is measured (a skip or an error keeps this shape)."""
    return GateRecord(
        nodeid=target.nodeid,
        file=target.file,
        model=target.model,
        profile=target.profile,
        variant=entry.name,
        kind=entry.kind,
        device=target.device,
        status=status,
        tolerance=entry.tolerance_text(),
    )


def measured_record(target: Target, entry: EntrySpec, m: Measured, partial: bool = False) -> GateRecord:
    """The record once the entry is measured, before the verdict (status ``error`` until judged)."""
    rec = new_record(target, entry, Status.ERROR)
    rec.ppl, rec.window_nlls = m.ppl, list(m.window_nlls)
    rec.n_windows, rec.n_windows_total = m.n_windows, m.n_windows_total
    rec.partial = partial or None
    rec.origin, rec.wall_time_s, rec.prepare_time_s = m.origin, m.wall_time_s, m.prepare_time_s
    rec.tokens_per_s = m.tokens_per_s
    rec.phases = {k: round(float(v), 3) for k, v in m.phases.items()} if m.phases else None
    rec.layers = where.compact(m.layers) if m.layers else None
    rec.moved, rec.baseline_layers = where.where_lines(entry, rec.layers), where.recorded_layers(entry)
    if m.kld is not None:
        recorded = entry.recorded.kld if entry.recorded is not None else None
        rec.kld = kld_gate.record_block(m.kld, recorded, m.n_windows, partial)
    return rec


def rerun_command(nodeid: str, *, force: bool = False) -> str:
    return f'pytest --update-baselines {"--force-update " if force else ""}"{nodeid}"'


def _ppl_disagrees(recorded: Recorded, own: float) -> bool:
    """The recorded ppl is not ``own`` = exp(mean of the recorded NLLs) within the storage rounding."""
    return not abs(own - recorded.ppl) <= HAND_EDIT_REL * recorded.ppl + HAND_EDIT_ABS


def recorded_problems(entry: EntrySpec) -> list[str]:
    """How ``entry``'s recorded block contradicts itself (numbers edited by hand); empty when it does not."""
    rec, out = entry.recorded, []
    if rec is None:
        return out
    own = ppl_of(rec.window_nlls)
    if _ppl_disagrees(rec, own):
        out.append(
            f"the recorded ppl {rec.ppl:.6f} does not match its own recorded window NLLs "
            f"(exp(mean) = {describe_ppl(own, rec.window_nlls)})"
        )
    n = (entry.fingerprint or {}).get("n_windows")
    if isinstance(n, int) and not isinstance(n, bool) and n != len(rec.window_nlls):
        out.append(f"the recorded window_nlls hold {len(rec.window_nlls)} values, but fingerprint.n_windows is {n}")
    recorded_with_reference = (entry.fingerprint or {}).get("reference") is not None
    reference = kld_gate.reference_name(entry) if recorded_with_reference else None
    return out + kld_gate.recorded_kld_problems(reference, rec)


def is_partial(max_windows_override: int | None, profile_max_windows: int | None) -> bool:
    """Does ``--pplgate-max-windows`` score other windows than the profile records?"""
    return max_windows_override is not None and max_windows_override != profile_max_windows


def partial_update_refusal(
    max_windows_override: int | None, profile_name: str, profile_max_windows: int | None
) -> str | None:
    """Why ``--update-baselines`` must not run with this window override (None: it may)."""
    if not is_partial(max_windows_override, profile_max_windows):
        return None
    return (
        f"refusing --update-baselines with --pplgate-max-windows {max_windows_override}: profile {profile_name!r} "
        f"records max_windows={profile_max_windows}; drop the override to update"
    )


def judge(
    target: Target,
    entry: EntrySpec,
    measured: Measured,
    *,
    others: Mapping[str, Mapping[str, float]] | None = None,
    update: bool = False,
    force: bool = False,
    partial: bool = False,
    provenance: Mapping[str, Any] | None = None,
) -> GateRecord:
    """The verdict on ``entry`` given its measurement (see the module docstring for the flow).

    ``others``: per metric, the values of the entries ``entry``'s rules name, measured in this session
    (``{"ppl": {ref: ppl}, "tokens_per_s": {...}, "kld": {ref: mean KLD}, "top1": {...}}``: :func:`values_of`).
    ``update``/``force``:
    ``--update-baselines``/``--force-update``. ``partial``: only the first ``measured.n_windows`` windows
    were scored (compared with the first recorded ones).
    ``provenance``: the ``recorded.provenance`` block written with an update.

    A failing record has its ``message`` (the full text pytest prints); a queued one its ``update``.
    """
    rec = measured_record(target, entry, measured, partial)
    session = others or {}
    header = text.header(target, entry, measured, partial)
    recorded = entry.recorded
    results: list[RuleResult] = []
    if recorded is not None:
        n_recorded = len(recorded.window_nlls)
        if partial and measured.n_windows > n_recorded:
            return _fail(
                rec,
                Status.DRIFT,
                f"{header}\n  --pplgate-max-windows {measured.n_windows} exceeds the {n_recorded} recorded windows",
            )
        _compare(rec, entry, recorded, measured, partial)
        problems = recorded_problems(entry)
        if rec.drift and not (update and force):
            return _drift_failure(rec, header, recorded, measured, update, problems)
        if not rec.drift:
            results = [rule.judge(measured, rec, session) for rule in entry.rules]
            rec.rules = [x.to_dict() for x in results]
            base_nlls = rec.baseline_window_nlls or []
            if len(base_nlls) == len(measured.window_nlls):  # else a problem (or drift) says why
                rec.paired = paired_stats(measured.window_nlls, base_nlls)
            elif not problems:
                problems.append(
                    f"the recorded window_nlls hold {len(base_nlls)} values, but this run scored "
                    f"{len(measured.window_nlls)} windows"
                )
        rec.inconsistent = problems or None
    elif not update:
        rec.rerun = rerun_command(target.nodeid)
        return _fail(
            rec,
            Status.MISSING,
            f"{header}\n  measured ppl {measured.ppl:.6f}, but no baseline is recorded for this entry.\n"
            f"  Create it with:\n    {rec.rerun}",
        )
    rec.detectable = detect.of_run(entry, measured, rec.paired, session)
    if update:
        return _queue(rec, target, entry, measured, session, provenance or {}, header)
    if not all(x.passed for x in results):
        return _tolerance_failure(rec, target, recorded, measured, results, header, provenance)
    if rec.inconsistent:
        return _inconsistent_failure(rec, target, measured, results, header)
    rec.status = Status.PASS
    return rec


def _fail(rec: GateRecord, status: Status, message: str) -> GateRecord:
    rec.status, rec.message = status, message + (where.where_text(rec.moved) if status in MOVED else "")
    return rec


def _compare(rec: GateRecord, entry: EntrySpec, recorded: Recorded, m: Measured, partial: bool) -> None:
    """The baseline numbers (the first K recorded windows in a partial run) and the fingerprint drift."""
    nlls, base, ignore = recorded.window_nlls, recorded.ppl, ()
    if partial:
        nlls = recorded.window_nlls[: m.n_windows]
        base = ppl_of(nlls)  # inf where exp overflows: compared, never raised
        ignore = ("n_windows",)
    delta = m.ppl - base
    rec.baseline, rec.delta, rec.rel_delta = base, delta, delta / base  # base >= 1: a ppl
    rec.baseline_window_nlls = list(nlls)
    rec.baseline_own_ppl = ppl_of(recorded.window_nlls)  # the whole recorded block, also in a partial run
    rec.hand_edited = _ppl_disagrees(recorded, rec.baseline_own_ppl)
    if entry.fingerprint is None:
        rec.drift = [("fingerprint", None, "(missing in the baseline file)")]
    else:
        rec.drift = compare_fingerprints(entry.fingerprint, m.fingerprint, ignore)


def _drift_failure(
    rec: GateRecord, header: str, recorded: Recorded, m: Measured, update: bool, problems: list[str]
) -> GateRecord:
    rec.rerun = rerun_command(rec.nodeid, force=True)
    how = (
        f"refusing to update across a protocol change without --force-update:\n    {rec.rerun}"
        if update
        else f"the perplexity was not compared. If the change is intended, re-record with:\n    {rec.rerun}"
    )
    return _fail(
        rec,
        Status.DRIFT,
        f"{header}\n  PROTOCOL DRIFT: the measurement protocol differs from the recorded one "
        f"in {describe_drift(rec.drift)}:\n{drift_lines(rec.drift)}\n"
        f"  measured ppl {describe_ppl(m.ppl, m.window_nlls)} (recorded {recorded.ppl:.6f}); {how}"
        + text.note(problems),
    )


def _queue(
    rec: GateRecord,
    target: Target,
    entry: EntrySpec,
    m: Measured,
    session: Mapping[str, Mapping[str, float]],
    provenance: Mapping[str, Any],
    header: str,
) -> GateRecord:
    """Queue the re-recording, unless a rule against this session's entries fails (re-recording
    cannot fix that: those rules do not depend on the old record)."""
    session_results = [rule.judge(m, rec, session) for rule in entry.rules if not rule.needs_recorded]
    if session_results and rec.rules is None:
        rec.rules = [x.to_dict() for x in session_results]
    if not all(x.passed for x in session_results):
        return _fail(
            rec,
            Status.FAIL,
            f"{header}\n  not updating: {text.session_failure(session_results)} in this session (re-recording cannot "
            "fix it):\n" + "\n".join(f"    {x.text}" for x in session_results),
        )
    klds = [m.kld.mean_kld, *m.kld.window_klds] if m.kld is not None else []
    if not (math.isfinite(m.ppl) and all(math.isfinite(x) for x in [*m.window_nlls, *klds])):
        return _fail(
            rec,
            Status.FAIL,
            f"{header}\n  not updating: the measured perplexity is {describe_ppl(m.ppl, m.window_nlls)}; a baseline "
            "records finite numbers only (is the model or the variant broken?)",
        )
    rec.status = Status.CREATED if entry.recorded is None else Status.UPDATED
    rec.update = EntryUpdate(
        profile=target.profile,
        variant=entry.name,
        fingerprint=dict(m.fingerprint),
        ppl=m.ppl,
        window_nlls=list(m.window_nlls),
        provenance=dict(provenance),
        section=target.section,
        kld=kld_gate.recorded_block(m.kld) if m.kld is not None else None,
        layers=rec.layers,
        replaces=entry.recorded.raw if entry.recorded is not None else None,
    )
    return rec


def _tolerance_failure(
    rec: GateRecord,
    target: Target,
    recorded: Recorded,
    m: Measured,
    results: list[RuleResult],
    header: str,
    provenance: Mapping[str, Any] | None,
) -> GateRecord:
    """A worse number (or a failing relational rule) is a regression; a better one is flagged too."""
    base = rec.baseline
    ppl_failed = any(not x.passed and x.rule.metric == "ppl" for x in results)
    kld_worse = any(not x.passed and x.rule.metric in COMPARISON_METRICS for x in results)
    kld_worse = kld_worse and kld_gate.worse_than_recorded(rec.kld)
    regression = m.ppl > base or kld_worse or any(not x.passed and not x.rule.needs_recorded for x in results)
    rec.rerun = rerun_command(target.nodeid)
    prov = recorded.provenance or {}
    what = "PERPLEXITY" if ppl_failed else "KL DIVERGENCE / TOP-1"
    what += (
        " REGRESSION"
        if regression
        else (
            " IMPROVEMENT outside tolerance (still a failure: re-record it, or let the rule bound only a worse "
            "number with `direction: worse`)"
        )
    )
    if all(x.rule.metric == "tokens_per_s" for x in results if not x.passed):
        what = "SPEED REGRESSION (every perplexity rule passes)"
    return _fail(
        rec,
        Status.FAIL if regression else Status.IMPROVED,
        f"{header}\n  {what}: measured {describe_ppl(m.ppl, m.window_nlls)} vs recorded {base:.6f}: "
        f"delta {rec.delta:+.6f} ({rec.rel_delta:+.4%})\n"
        "  rules (all must pass):\n" + "\n".join(f"    {x.text}" for x in results) + "\n"
        f"  {text.paired_text(rec)}{text.kld_text(rec)}{text.note(rec.inconsistent)}\n"
        f"  recorded {prov.get('date', '?')} on {prov.get('device_name', '?')} "
        f"(pplgate {prov.get('pplgate', '?')}, commit {prov.get('git_commit', '?')}, "
        f"torch {prov.get('torch', '?')}){text.changes_text(prov, provenance)}{text.machine_text(prov, provenance)}\n"
        f"  if the change is intended, re-record with:\n    {rec.rerun}",
    )


def _inconsistent_failure(
    rec: GateRecord, target: Target, m: Measured, results: list[RuleResult], header: str
) -> GateRecord:
    """Every rule passes, but against a recorded block that contradicts itself: that vouches for nothing."""
    rec.rerun = rerun_command(target.nodeid)
    return _fail(
        rec,
        Status.INCONSISTENT,
        f"{header}\n  RECORDED BASELINE INCONSISTENT: the entry's recorded numbers contradict each other, "
        "so they cannot vouch for this run:\n"
        + "".join(f"    {p}\n" for p in rec.inconsistent or ())
        + f"  measured ppl {describe_ppl(m.ppl, m.window_nlls)}; the rules against the recorded ppl:\n"
        + "".join(f"    {x.text}\n" for x in results)
        + f"  {text.paired_text(rec)}\n"
        f"  was the baseline file edited by hand? Re-record the entry with:\n    {rec.rerun}",
    )

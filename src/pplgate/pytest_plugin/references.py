"""Entries with a ``reference:``: one shared comparison pass per reference, and what the verdict needs of it.

When the first gate item of a group runs (the reference's own entry, or the first entry naming it), every
entry of the profile that names that reference and that this session needs (selected, or named by a
selected entry's rules) is compared with it in one pass (:meth:`pplgate.measure.Measurer.compare_many`:
one forward per model). That pass also records each model's perplexity as the session's measurement of
its request, so the reference's own entry and the variants' PPLs are not measured again. Memory: the
reference and every variant of the group are loaded together; ``--pplgate-compare-group K`` splits a
group into passes of at most K variants (each further pass runs the reference's forward again; the
reference's own PPL still comes from the first).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pplgate.errors import PplgateError, VariantError
from pplgate.gate.kld import KldMeasured, reference_identity
from pplgate.gate.kld_rules import COMPARISON_METRICS
from pplgate.gate.spec import EntrySpec

if TYPE_CHECKING:
    from pplgate.comparing import Comparison
    from pplgate.pytest_plugin.items import GateItem


class _Gate(Protocol):
    config: Any
    comparisons: dict[tuple[str, str, str], Any]
    measurer: Any

    def max_windows(self, profile: Any) -> int | None: ...


@dataclass(frozen=True)
class ReferenceRun:
    """An entry's comparison with its reference: the verdict's inputs."""

    kld: KldMeasured
    identity: dict[str, Any]  # the fingerprint's ``reference`` block
    session_values: dict[str, dict[str, float]]  # kld/top1 of the entries its rules name

    def fingerprint(self, fp: Mapping[str, Any]) -> dict[str, Any]:
        return {**fp, "reference": self.identity}


def _key(item: GateItem, name: str) -> tuple[str, str, str]:
    return (str(item.spec.path), item.profile.name, name)


def _needed(item: GateItem) -> set[str]:
    """Entries of ``item``'s profile this session runs, and those their rules name."""
    names: set[str] = set()
    for other in getattr(item.session, "items", None) or [item]:
        same = getattr(other, "spec", None) is item.spec and getattr(other, "profile", None) is item.profile
        if same:
            names.add(other.variant.name)
            names.update(other.variant.refs)
    return names


def _compare_group(gate: _Gate, item: GateItem, reference: str) -> None:
    """Compare every needed entry naming ``reference`` (not compared yet) with it, in one pass."""
    profile, needed = item.profile, _needed(item)
    group = [
        e
        for e in profile.variants.values()
        if e.reference == reference and e.name in needed and _key(item, e.name) not in gate.comparisons
    ]
    if not group:
        return
    ref = profile.variants[reference]
    size = gate.config.getoption("--pplgate-compare-group") or len(group)
    for start in range(0, len(group), size):
        _compare(gate, item, ref, group[start : start + size])


def _compare(gate: _Gate, item: GateItem, ref: EntrySpec, group: list[EntrySpec]) -> None:
    """One pass for the group. When it fails, each entry is compared alone, so that one entry's error (a
    quantizer that cannot build its model, a team's code that raises) is that entry's, and the others are
    still measured."""
    profile = item.profile

    def compare(entries: list[EntrySpec]) -> list[Any]:
        return gate.measurer.compare_many(
            item.source,
            [(item.source, e.kind, e.params) for e in entries],
            reference_kind=ref.kind,
            reference_params=ref.params,
            device=item.device,
            tokenizer=item.tokenizer_ref,
            seqlen=profile.seqlen,
            batch_size=profile.batch_size,
            max_windows=gate.max_windows(profile),
        )

    try:
        results: list[Any] = compare(group)
    except Exception as exc:
        failed = _reference_failure(gate, item, ref)
        if failed is not None:  # the reference itself cannot be built: every entry of the pass says so
            results = [_named(ref, entry, failed) for entry in group]
        elif len(group) == 1:
            results = [exc]  # raised again by the entry's own item (run), not by the reference's
        else:
            results = []
            for entry in group:
                try:
                    results += compare([entry])
                except Exception as one:  # raised again by the entry's own item (run)
                    results.append(one)
    for entry, comparison in zip(group, results, strict=True):
        gate.comparisons[_key(item, entry.name)] = comparison


def _reference_failure(gate: _Gate, item: GateItem, ref: EntrySpec) -> Exception | None:
    """After a failed pass: the reference prepared alone (the session keeps it for its own entry's measure);
    its exception when that fails too, else None (the failure was a variant's)."""
    try:
        gate.measurer.prepare(
            item.source,
            kind=ref.kind,
            params=ref.params,
            device=item.device,
            tokenizer=item.tokenizer_ref,
            device_map=item.profile.device_map,
        )
    except Exception as exc:
        return exc
    return None


def _named(ref: EntrySpec, entry: EntrySpec, exc: Exception) -> VariantError:
    """``reference 'rtn' of entry 'gptq' failed: ...``: one line, the reference's exception attached."""
    text = str(exc) if isinstance(exc, PplgateError) else f"{type(exc).__name__}: {exc}"
    err = VariantError(f"reference {ref.name!r} of entry {entry.name!r} failed: {' '.join(text.split())[:600]}")
    err.__cause__ = exc
    return err


def run(gate: _Gate, item: GateItem, entry: EntrySpec) -> ReferenceRun | None:
    """Run the shared pass ``item`` belongs to (as reference or as variant) unless done; ``entry``'s
    comparison with its reference (None for an entry without one)."""
    names_it = any(e.reference == entry.name for e in item.profile.variants.values())
    if names_it:
        _compare_group(gate, item, entry.name)
    if entry.reference is None:
        return None
    _compare_group(gate, item, entry.reference)
    c: Comparison | Exception = gate.comparisons[_key(item, entry.name)]
    if isinstance(c, Exception):
        raise c  # this entry's own failure, kept from the shared pass
    r = c.result
    values: dict[str, dict[str, float]] = {"kld": {}, "top1": {}}
    for rule in entry.rules:
        other = gate.comparisons.get(_key(item, rule.ref)) if rule.metric in COMPARISON_METRICS and rule.refs else None
        if other is not None and not isinstance(other, Exception):
            values["kld"][rule.ref] = other.result.mean_kld
            values["top1"][rule.ref] = other.result.top1_agreement
    return ReferenceRun(
        kld=KldMeasured(
            reference=entry.reference,
            mean_kld=r.mean_kld,
            top1_agreement=r.top1_agreement,
            window_klds=list(r.window_klds),
            window_top1=list(r.window_top1),
        ),
        identity=reference_identity(entry.reference, c.reference.fingerprint["variant"], c.reference.result.dtype),
        session_values=values,
    )

"""A profile, the gate's unit of measurement: every entry a session needs, each comparison pass once.

:func:`measure_profile` turns a :class:`~pplgate.measurement.ProfileRequest` into ``{entry: Measurement}`` (the
comparison with the entry's reference inside) through the :class:`~pplgate.measure.Measurer`'s public methods:
``compare_many`` (the entries naming one reference entry, in one pass), ``compare_file`` (an entry against a stored
reference file) and ``measure`` (the rest; the PPLs of a pass are the session's measurements already).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pplgate.errors import PplgateError, VariantError
from pplgate.measurement import Comparison, Measurement, ProfileRequest

if TYPE_CHECKING:
    from pplgate.gate.spec import EntrySpec
    from pplgate.measure import Measurer

Outcome = Any  # Measurement | Comparison, or the BaseException measuring it raised
_PASSED_ON = (KeyboardInterrupt, SystemExit)  # what stops the session instead of failing one entry


def measure_profile(measurer: Measurer, profile: ProfileRequest, names: Iterable[str]) -> dict[str, Outcome]:
    """Every entry of ``profile`` named in ``names`` (and the reference entries they name) measured once:
    ``{entry: Measurement}`` with the comparison inside for an entry with a reference, or the exception that
    entry's own measurement raised (one entry's failure is its own; the others are still measured).

    The entries naming one reference entry are compared with it in one pass (at most ``compare_group``
    variants per pass, each pass running the reference's forward), which gives each model's PPL too; an entry
    naming a stored reference file is one pass of its own model. Memory: a pass's models are loaded together."""
    by_name = {e.name: e for e in profile.entries}
    wanted = set(names)
    wanted |= {by_name[n].reference for n in wanted if n in by_name and by_name[n].reference}
    compared: dict[str, Outcome] = {}
    for ref in dict.fromkeys(e.reference for e in profile.entries if e.reference and e.name in wanted):
        group = [e for e in profile.entries if e.reference == ref and e.name in wanted]
        size = profile.compare_group or len(group)
        for start in range(0, len(group), size):
            compared.update(_compare_entries(measurer, profile, by_name[ref], group[start : start + size]))
    out: dict[str, Outcome] = {}
    for e in profile.entries:
        if e.name not in wanted:
            continue
        try:
            c = compared.get(e.name) or (_compare_file(measurer, profile, e) if e.reference_file else None)
            if isinstance(c, BaseException):
                raise c
            m = c.model if c is not None and c.stored else _measure(measurer, profile, e)
            # the comparison, and the provenance of the per-module profile against its reference, on this entry's
            # own copy (the Measurer's measurement of the request is shared)
            out[e.name] = m if c is None else replace(m, comparison=c, extra={**m.extra, **c.layers_info})
        except _PASSED_ON:
            raise
        except BaseException as exc:  # this entry's own failure (a skip a team's code asks for too)
            out[e.name] = exc
    return out


def _scored(profile: ProfileRequest, e: EntrySpec) -> dict[str, Any]:
    """The keyword arguments every Measurer call of entry ``e`` takes from its profile."""
    return {
        "kind": e.kind,
        "params": e.params,
        "device": profile.device,
        "tokenizer": profile.tokenizer,
        "seqlen": profile.seqlen,
        "batch_size": profile.batch_size,
        "max_windows": profile.max_windows,
        "label": f"{profile.source.short_name()} {e.name}",
    }


def _measure(measurer: Measurer, profile: ProfileRequest, e: EntrySpec) -> Measurement:
    return measurer.measure(profile.source, device_map=profile.device_map, **_scored(profile, e))


def _compare_file(measurer: Measurer, profile: ProfileRequest, e: EntrySpec) -> Comparison:
    """``e`` against the stored reference its ``reference: {file: ...}`` names; a missing file says how to write it."""
    path = os.path.expanduser(os.path.expandvars(str(e.reference_file)))
    if "$" in path:
        raise VariantError(f"entry {e.name!r}: its reference file {path} names an unset environment variable")
    if not Path(path).is_file():
        raise VariantError(
            f"entry {e.name!r}: its reference file {path} does not exist. Write it on this machine with `pplgate "
            f"reference save --model MODEL --variant fp16 --out {path}` (the profile's model, the reference's variant "
            "and dtype, --seqlen and --max-windows of the profile), or restore it from your CI cache / artifact"
        )
    return measurer.compare_file(path, profile.source, **_scored(profile, e))


def _compare_entries(measurer: Measurer, profile: ProfileRequest, ref: EntrySpec, group: list[EntrySpec]) -> dict:
    """One pass for ``group`` against ``ref``. When it fails, each entry is compared alone, so that one
    entry's error (a quantizer that cannot build its model, a team's code that raises) is that entry's."""

    def compare(entries: list[EntrySpec]) -> list[Comparison]:
        return measurer.compare_many(
            profile.source,
            [(profile.source, e.kind, e.params) for e in entries],
            reference_kind=ref.kind,
            reference_params=ref.params,
            device=profile.device,
            tokenizer=profile.tokenizer,
            seqlen=profile.seqlen,
            batch_size=profile.batch_size,
            max_windows=profile.max_windows,
        )

    try:
        return dict(zip((e.name for e in group), compare(group), strict=True))
    except _PASSED_ON:
        raise
    except BaseException as exc:
        try:  # the reference alone (kept for its own entry's measure): was it the reference or a variant?
            measurer.prepare(
                profile.source,
                kind=ref.kind,
                params=ref.params,
                device=profile.device,
                tokenizer=profile.tokenizer,
                device_map=profile.device_map,
            )
        except _PASSED_ON:
            raise
        except BaseException as failed:  # the reference cannot be built: every entry of the pass says so
            return {e.name: _named(ref, e, failed) for e in group}
        if len(group) == 1:
            return {group[0].name: exc}
    out: dict[str, Outcome] = {}
    for e in group:
        try:
            out[e.name] = compare([e])[0]
        except _PASSED_ON:
            raise
        except BaseException as one:
            out[e.name] = one
    return out


def _named(ref: EntrySpec, entry: EntrySpec, exc: BaseException) -> BaseException:
    """``reference 'rtn' of entry 'gptq' failed: ...``: one line, the reference's exception attached (a skip
    the reference's code asked for stays a skip)."""
    if not isinstance(exc, Exception):
        return exc
    text = str(exc) if isinstance(exc, PplgateError) else f"{type(exc).__name__}: {exc}"
    err = VariantError(f"reference {ref.name!r} of entry {entry.name!r} failed: {' '.join(text.split())[:600]}")
    err.__cause__ = exc
    return err

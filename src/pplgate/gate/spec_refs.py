"""The checks across the entries of one profile (:func:`pplgate.gate.spec.parse_baseline` calls
:func:`check_refs`): rules that compare with other entries name known entries of the profile, not
themselves; an entry's ``reference:`` names another entry (:func:`pplgate.gate.kld.check_reference`)
on a profile without ``device_map``; a speed rule compares two entries of one comparison pass or two
entries measured alone; and neither rules' ``ref`` nor entries' ``reference`` form a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pplgate.gate.kld import check_reference
from pplgate.gate.validator import Validator

# pplgate.gate.spec's ProfileSpec / EntrySpec (not imported: spec imports this module)
ProfileSpec = Any
EntrySpec = Any


def check_refs(v: Validator, profile: ProfileSpec, profiles: Mapping[str, ProfileSpec]) -> None:
    """Rules that compare with other entries name known entries of this profile, not themselves, no cycles."""
    entries, kp = profile.variants, f"profiles.{profile.name}"
    for es in entries.values():
        for i, rule in enumerate(es.rules):
            line = es.rule_lines[i] if i < len(es.rule_lines) else None
            for ref in rule.refs:
                rkp = f"{kp}.variants.{es.name}.tolerance[{i}].ref"
                if ref not in entries:
                    elsewhere = [p for p in profiles if ref in profiles[p].variants]
                    hint = (
                        f"; {ref!r} is a variant of profile {', '.join(elsewhere)}, and a {rule.type} rule compares "
                        "entries of one profile (measured on the same device and windows)"
                        if elsewhere
                        else ""
                    )
                    v.err(
                        rkp,
                        f"{rule.type} rule references unknown variant {ref!r} "
                        f"(variants of profile {profile.name}: {', '.join(entries)}){hint}",
                        line=line,
                    )
                if ref == es.name:
                    v.err(rkp, "a variant cannot be relative to itself", line=line)
        check_reference(v, entries, es, kp, profiles)
        if (es.reference or es.reference_file) is not None and profile.device_map is not None:
            v.err(
                f"{kp}.variants.{es.name}.reference",
                f"a comparison with a reference runs both models on one device; profile {profile.name} spreads "
                f"them with device_map: {profile.device_map} (drop one of the two)",
                line=es.line,
            )
    _check_speed_rules(v, entries, kp)
    for es in entries.values():
        seen, stack = set(), list(es.refs)
        while stack:
            ref = stack.pop()
            if ref == es.name:
                v.err(
                    f"{kp}.variants.{es.name}.tolerance",
                    "relational rules form a cycle (through rules' ref and entries' reference)",
                    line=es.line,
                )
            if ref not in seen:
                seen.add(ref)
                stack.extend(entries[ref].refs)


def _scored(passes: set[str]) -> str:
    """How an entry in ``passes`` (the references whose comparison passes score it) is timed, in words."""
    if not passes:
        return "alone"
    return f"the pass of reference {next(iter(passes))}" if len(passes) == 1 else "two passes"


def _check_speed_rules(v: Validator, entries: Mapping[str, EntrySpec], kp: str) -> None:
    """A speed rule compares like with like: two entries of one shared comparison pass (their own forward
    passes, timed apart in the pass), or two entries measured alone (their whole evaluations), never one
    of each (an entry with a ``reference``, and that reference, are scored in the pass)."""
    passes: dict[str, set[str]] = {}
    for es in entries.values():
        if es.reference:
            passes.setdefault(es.name, set()).add(es.reference)
            passes.setdefault(es.reference, set()).add(es.reference)
        elif es.reference_file:  # its own pass against the file
            passes.setdefault(es.name, set()).add(f"file {es.reference_file}")
    for es in entries.values():
        for i, rule in enumerate(es.rules):
            if rule.metric != "tokens_per_s":
                continue
            mine = passes.get(es.name, set())
            for ref in rule.refs:
                theirs = passes.get(ref, set())
                if mine == theirs and len(mine) <= 1:
                    continue
                v.err(
                    f"{kp}.variants.{es.name}.tolerance[{i}]",
                    f"a speed rule compares two entries timed the same way, but {es.name} is scored {_scored(mine)} "
                    f"and {ref} {_scored(theirs)}: in a shared comparison pass an entry's tokens/s is its own forward "
                    "passes, alone its whole evaluation. Compare entries of one pass (e.g. ref: the reference "
                    "itself), or two entries without a reference",
                    line=es.rule_lines[i] if i < len(es.rule_lines) else None,
                )

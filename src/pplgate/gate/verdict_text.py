"""The sentences of the verdict's messages (:mod:`pplgate.gate.verdict`): the header naming the test, the
paired per-window comparisons (ΔNLL, and ΔKLD for an entry with a reference), what fails in this session,
the "edited by hand?" note. Pure: strings from records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pplgate.gate import kld as kld_gate
from pplgate.gate.kld_rules import COMPARISON_METRICS
from pplgate.gate.record import GateRecord
from pplgate.gate.rules import RuleResult
from pplgate.gate.spec import EntrySpec

# pplgate.gate.verdict's Target / Measured (not imported: verdict imports this module)
Target = Any
Measured = Any


def header(target: Target, entry: EntrySpec, m: Measured, partial: bool) -> str:
    if target.section != "profiles":  # an entry of ppl_regression.check: no profile, the test sets the numbers
        return (
            f"pplgate: {target.name}\n  model {target.model} ({target.source}), entry {target.section}.{entry.name} "
            f"(kind {entry.kind}, origin {m.origin}; device {target.device}, seqlen {target.seqlen}, "
            f"{m.n_windows}/{m.n_windows_total} windows{', PARTIAL' if partial else ''})"
        )
    return (
        f"pplgate: {target.name}\n  model {target.model} ({target.source}), profile {target.profile} "
        f"(device {target.device}, seqlen {target.seqlen}, {m.n_windows}/{m.n_windows_total} windows"
        f"{', PARTIAL' if partial else ''}), variant {entry.name} (kind {entry.kind}, origin {m.origin})"
    )


# provenance fields that describe the machine a number was measured on (pplgate.provenance.collect)
MACHINE_FIELDS = {
    "device_name": "device",
    "host_cpu": "host CPU",
    "cpu_isa": "instruction set",
    "blas": "BLAS",
    "threads": "thread count",
    "torch": "torch",
}


def _machine(prov: Mapping[str, Any]) -> str:
    threads, torch = prov.get("threads"), prov.get("torch")
    facts = [prov.get("host_cpu"), prov.get("cpu_isa"), prov.get("blas")]
    facts += [f"{threads} threads" if threads else None, f"torch {torch}" if torch else None]
    shown = ", ".join(str(f) for f in facts if f)
    return f"{prov.get('device_name', '?')}" + (f" ({shown})" if shown else "")


def machine_text(recorded: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> str:
    """Whether this run's machine is the recording one: a reviewer must tell "another CPU" from "your change".
    Compares the fields both provenance blocks hold; empty when either is missing."""
    if not recorded or not current:
        return ""
    differ = [k for k in MACHINE_FIELDS if recorded.get(k) is not None and current.get(k) not in (None, recorded[k])]
    if not differ:
        return f"\n  machine: the recording one ({_machine(current)}): the difference is not the machine's"
    return (
        f"\n  ANOTHER MACHINE than the record's (the {', '.join(MACHINE_FIELDS[k] for k in differ)} differ"
        f"{'s' if len(differ) == 1 else ''}):"
        f"\n    recorded on {_machine(recorded)}\n    measured on {_machine(current)}"
        "\n    calibrated quantizers (GPTQ, AWQ) round differently when the arithmetic differs: re-run on the "
        "recording machine to tell a machine difference from a change"
    )


def note(problems: list[str] | None) -> str:
    """The "edited by hand?" line of a failure message (empty when the recorded block is consistent)."""
    return f"\n  note: {'; '.join(problems)}; was the baseline file edited by hand?" if problems else ""


def paired_text(rec: GateRecord) -> str:
    """The paired per-window ΔNLL sentence, and the entry's detectable shift beside its tolerance."""
    paired = (
        rec.paired.describe()
        if rec.paired is not None
        else "no per-window comparison: the recorded window NLLs do not pair with this run's windows"
    )
    return paired + (f"\n  {rec.detectable.describe()}" if rec.detectable is not None else "")


def session_failure(results: Sequence[RuleResult]) -> str:
    """``a relational rule fails`` / ``a speed rule fails`` / ``a kld bound fails``: what fails in this session
    (a kld/top1 rule with ``ref`` compares with another entry: relational; without, a bound on this entry)."""
    failing = [x.rule for x in results if not x.passed]
    compared = [("relational" if r.metric in COMPARISON_METRICS else r.type) for r in failing if r.refs]
    parts = [f"a {'/'.join(dict.fromkeys(compared))} rule fails"] if compared else []
    bounds = [r.type for r in failing if not r.refs]
    return " and ".join(parts + ([f"a {'/'.join(dict.fromkeys(bounds))} bound fails"] if bounds else []))


def kld_text(rec: GateRecord) -> str:
    """The KLD summary and its paired per-window comparison (empty for an entry without a reference)."""
    if rec.kld is None:
        return ""
    paired = rec.kld.get("paired")
    return f"\n  {kld_gate.summary_line(rec.kld)}" + (
        f"\n  {kld_gate.describe_paired(paired)}" if paired else "\n  no per-window KLD comparison recorded"
    )


# provenance fields whose change between the record and now a reviewer needs beside a failure
CHANGE_FIELDS = ("pplgate", "torch", "transformers", "autoawq", "llmcompressor", "compressed_tensors")


def changes_text(recorded: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> str:
    """The measured commit, and what differs from the record: library versions and the quantizer's code hash."""
    if not recorded or not current:
        return ""
    out = f"\n  measured at commit {current.get('git_commit', '?')}"
    changed = [
        f"{k} {recorded[k]} -> {current.get(k, 'absent')}"
        for k in CHANGE_FIELDS
        if k in recorded and recorded[k] != current.get(k)
    ]
    old_code = (recorded.get("prepare_info") or {}).get("code_sha256")
    new_code = (current.get("prepare_info") or {}).get("code_sha256")
    if old_code and new_code and old_code != new_code:
        changed.append(f"quantizer code {str(old_code)[:12]} -> {str(new_code)[:12]}")
    return out + (f"; changed since the record: {', '.join(changed)}" if changed else "; same versions as the record")

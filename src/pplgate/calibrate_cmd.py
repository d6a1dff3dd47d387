"""``pplgate calibrate BASELINE.yaml [--profile P] [-k ENTRY ...] -n N [--json F] [--update-baselines]``.

Measures the selected entries of a profile N times as the gate runner does (entries naming a ``reference:``
in one comparison pass per reference; the entries their rules name measured too), each run with a fresh
:class:`~pplgate.measure.Measurer` whose caches are off, so every run loads and re-quantizes from scratch
and the quantizer's own run-to-run spread is in the numbers. Per rule it prints the spread and a proposed
bound (:mod:`pplgate.gate.calibrate`); ``--update-baselines`` writes the proposals, with the measured
spread, N, the machine and the date in a comment beside each rule (:mod:`pplgate.gate.tolerance_update`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import time
from collections.abc import Callable
from pathlib import Path

from pplgate.errors import BaselineError, PplgateError
from pplgate.gate import calibrate
from pplgate.gate.spec import BaselineSpec, EntrySpec, ProfileSpec, parse_baseline
from pplgate.gate.store import read_text
from pplgate.gate.tolerance_update import ToleranceEdit, write_edits

Runs = list[dict[str, dict[str, float]]]  # per run: entry -> metric -> value


def add_parser(sub: argparse._SubParsersAction) -> None:
    ca = sub.add_parser(
        "calibrate",
        help="measure baseline entries N times (re-quantized each time) and propose tolerances from the spread",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ca.add_argument("baseline", metavar="BASELINE.yaml", help="the baseline file")
    ca.add_argument("--profile", help="the profile to calibrate (needed when the file has several)")
    ca.add_argument("-k", dest="entries", action="append", metavar="ENTRY", help="an entry (repeat; default: all)")
    ca.add_argument("-n", dest="runs", type=int, required=True, metavar="N", help="measurements per entry (>= 2)")
    ca.add_argument("--json", dest="json_out", metavar="F", help="write every run's values and the proposals here")
    ca.add_argument(
        "--update-baselines",
        action="store_true",
        help="write the proposed bounds into the file, the measured spread, N, machine and date beside each",
    )
    ca.add_argument("--dataset", metavar="PATH", help="the WikiText-2 test split (default: as for pplgate eval)")


def _select(spec: BaselineSpec, profile: str | None, names: list[str] | None) -> tuple[ProfileSpec, list[EntrySpec]]:
    """The profile and its selected entries; errors name what exists."""
    if not spec.profiles:
        raise BaselineError(spec.path, "profiles", "no profiles: calibrate measures profiles' entries")
    if profile is None:
        if len(spec.profiles) > 1:
            raise BaselineError(spec.path, "profiles", f"several profiles ({', '.join(spec.profiles)}): pass --profile")
        profile = next(iter(spec.profiles))
    if profile not in spec.profiles:
        raise BaselineError(
            spec.path, "profiles", f"no profile {profile!r}; --profile takes one of: {', '.join(spec.profiles)}"
        )
    prof = spec.profiles[profile]
    unknown = ", ".join(repr(n) for n in names or [] if n not in prof.variants)
    if unknown:
        raise BaselineError(
            spec.path,
            f"profiles.{profile}.variants",
            f"no entry {unknown} in profile {profile}; -k takes one of: {', '.join(prof.variants)}",
        )
    stored = [n for n in names or [] if prof.variants[n].reference_file]
    if stored:
        raise BaselineError(
            spec.path,
            f"profiles.{profile}.variants.{stored[0]}",
            "compared with a stored reference file: calibrate measures in-memory comparisons only; leave it out "
            "of -k (its KLD width is the file's estimate error, see docs/KLD.md)",
        )
    if names:
        return prof, [prof.variants[n] for n in dict.fromkeys(names)]
    return prof, [e for e in prof.variants.values() if not e.reference_file]


def _needed(prof: ProfileSpec, selected: list[EntrySpec]) -> list[EntrySpec]:
    """The selected entries and those their rules and references name, in file order (the runner's set)."""
    names = {e.name for e in selected}.union(*(e.refs for e in selected))
    return [e for e in prof.variants.values() if e.name in names]


def measure_once(
    spec: BaselineSpec, prof: ProfileSpec, needed: list[EntrySpec], dataset: str | None
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """One run: a fresh Measurer, caches off. Per needed entry its ppl, tokens/s, preparation seconds and (with a
    reference) KLD/top-1; and its origin (``quantized``: built in this run, ``loaded``: a float model)."""
    from pplgate.measure import Measurer, ProfileRequest
    from pplgate.models.source import resolve_source
    from pplgate.profile import measure_profile

    assert spec.model is not None
    source = resolve_source(spec.resolve_path(spec.model.source), spec.model.gguf_file, spec.model.revision)
    request = ProfileRequest(
        source=source,
        device=prof.device,
        entries=list(prof.variants.values()),
        tokenizer=spec.resolve_path(spec.model.tokenizer),
        seqlen=prof.seqlen,
        batch_size=prof.batch_size,
        max_windows=prof.max_windows,
        device_map=prof.device_map,
    )  # as the runner measures the profile: each reference's entries in one pass
    measurer = Measurer(dataset=dataset, cache_mode="off")
    measured = measure_profile(measurer, request, [e.name for e in needed])
    values: dict[str, dict[str, float]] = {}
    origins: dict[str, str] = {}
    for e in needed:
        m = measured[e.name]
        if isinstance(m, BaseException):
            raise m
        r = m.result
        values[e.name] = {"ppl": r.ppl, "tokens_per_s": r.tokens_per_s, "prepare_time_s": m.prepare_time_s}
        if m.comparison is not None:
            values[e.name].update(kld=m.comparison.result.mean_kld, top1=m.comparison.result.top1_agreement)
        origins[e.name] = m.origin
    del measurer
    gc.collect()
    return values, origins


def _machine(device: str) -> str:
    from pplgate.provenance import device_name

    return device_name(device)


def edits_for(prof: ProfileSpec, proposals: dict[str, list[calibrate.Proposal]], machine: str) -> list[ToleranceEdit]:
    """The file edits of ``--update-baselines``: every rule's proposed bound and the spread beside it."""
    date = _dt.date.today().isoformat()
    return [
        ToleranceEdit(
            entry=("profiles", prof.name, "variants", name),
            index=p.index,
            key=p.key,
            text=calibrate.format_number(p.proposed),
            comment=f"{date}, {machine}: {p.note()}; {p.reason()}",
        )
        for name, props in proposals.items()
        for p in props
    ]


def cmd_calibrate(args: argparse.Namespace, check_output_file: Callable[[str, str], None]) -> int:
    """The command; ``check_output_file``: the CLI's check of a ``--json`` path (fails before any work)."""
    from pplgate.models.registry import known_kinds

    if args.runs < 2:
        raise PplgateError(f"-n {args.runs}: a spread needs at least 2 runs; pass e.g. -n 3")
    path = Path(args.baseline)
    original = read_text(path)
    spec = parse_baseline(path, known_kinds=known_kinds())
    prof, selected = _select(spec, args.profile, args.entries)
    if args.json_out:
        check_output_file(args.json_out, "--json")
    needed = _needed(prof, selected)
    runs: Runs = []
    for i in range(args.runs):
        t0 = time.perf_counter()
        values, origins = measure_once(spec, prof, needed, args.dataset)
        runs.append(values)
        shown = ", ".join(
            f"{n} {v['ppl']:.6f} ({origins[n]}, prepared in {v['prepare_time_s']:.0f} s)" for n, v in values.items()
        )
        print(f"run {i + 1}/{args.runs} ({time.perf_counter() - t0:.0f} s): {shown}", flush=True)
        if args.json_out:  # the runs so far: kept when a later run fails
            Path(args.json_out).write_text(json.dumps({"file": str(path), "profile": prof.name, "runs": runs}) + "\n")
    proposals = {e.name: calibrate.propose_entry(e, runs) for e in selected}
    for name, props in proposals.items():
        print(calibrate.table(name, props))
    machine = _machine(prof.device)
    if args.json_out:
        doc = {
            "file": str(path),
            "profile": prof.name,
            "n": args.runs,
            "machine": machine,
            "runs": runs,
            "multiple": calibrate.MULTIPLE_TEXT,
            "proposals": [p.to_dict() for ps in proposals.values() for p in ps],
        }
        Path(args.json_out).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    if args.update_baselines:
        edits = edits_for(prof, proposals, machine)
        write_edits(path, original, edits)
        print(f"wrote {len(edits)} tolerance(s) into {path}")
    return 0

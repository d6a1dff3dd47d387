"""``pplgate report merge``: the JSON reports of several shards (or runs) -> one report and one verdict.

Each input is a ``--pplgate-report`` directory: ``pplgate-results.json`` (the records) and, for a
``--pplgate-shard K/N`` run, ``pplgate-shard.json`` (every selected entry and the shard that runs it).
With manifests the merge proves coverage: every shard 1..N reported once, all shards selected the same
entries, and every entry has exactly one record. An entry without a record, or with several, becomes
an ``error`` record, so it shows in the table and fails the verdict like any other failure.

Queued baseline updates travel in the records (``--update-baselines`` on the shards):
:func:`apply_updates` writes them into the baseline files through :func:`pplgate.gate.store.write_all`
(locked, atomic, comments kept, all files or none), and only when the coverage is complete.

**Reports are untrusted input** (a fork's pull request can produce one): every field is checked before it
is used; an update may only name a baseline file that exists inside the baselines directory of
``--rootdir`` (no ``..``, no absolute path, no link leading out) and an entry name the collector accepts.
A report that asks for anything else is refused as a whole, naming the report and the field, before any
file is written. Run the merge job with write access to the checkout alone.

What the reports say is checked against the checkout (:mod:`pplgate.gate.merge_checks`): every ``pass``
record is judged again against its current baseline file, shards on other commits or pplgate versions
fail the merge, and an update whose entry was re-recorded after its shard read the file is refused.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pplgate.errors import PplgateError
from pplgate.gate import merge_checks, reports
from pplgate.gate.merge_input import (  # noqa: F401  (MergeError, MAX_REPORT_BYTES: re-exported)
    MAX_REPORT_BYTES,
    MergeError,
    _bad,
    _check_manifest,
    _check_record,
    _present,
    _read_json,
    _target,
    _update_of,
)
from pplgate.gate.record import FAILING, Status
from pplgate.gate.shard import MANIFEST_NAME
from pplgate.gate.store import TESTS, EntryUpdate, write_all

RESULTS_NAME = "pplgate-results.json"
SUMMARY_NAME = "pplgate-summary.md"
MERGE_KEY = "merge"


@dataclass
class ShardReport:
    """One input directory: its records and, for a sharded run, its manifest."""

    dir: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    update_rows: list[dict[str, Any]] = field(default_factory=list)
    blocked: str | None = None
    manifest: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return f"shard {self.manifest['shard']} ({self.dir})" if self.manifest else str(self.dir)


@dataclass
class Merged:
    """The merged records, what is wrong with the coverage, and the verdict."""

    records: list[dict[str, Any]]
    update_rows: list[dict[str, Any]]
    blocked: str | None
    problems: list[str]
    shards: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)  # records re-judged as failures (merge_checks.rejudge)
    sources: dict[str, ShardReport] = field(default_factory=dict)  # node id -> the input that reported it

    @property
    def passed(self) -> bool:
        return not self.problems and not self.blocked and not any(r.get("status") in FAILING for r in self.records)

    def verdict(self) -> str:
        line = reports.verdict(self.records, self.blocked)
        if self.problems:
            line = line.replace("PASSED", "FAILED") + f", {len(self.problems)} coverage problem(s)"
        return line


def report_dirs(paths: list[str | Path]) -> list[Path]:
    """Each path that holds a report; a path that holds none stands for its sub-directories that do."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise MergeError(f"{p}: not a directory; pass the --pplgate-report directories of the shards")
        if (p / RESULTS_NAME).is_file() or (p / MANIFEST_NAME).is_file():
            out.append(p)
            continue
        found = sorted({f.parent for name in (RESULTS_NAME, MANIFEST_NAME) for f in p.rglob(name)})
        if not found:
            raise MergeError(f"{p}: no {RESULTS_NAME} or {MANIFEST_NAME} in it or below it")
        out.extend(found)
    return out


def load(d: Path) -> ShardReport:
    rep = ShardReport(dir=d)
    if _present(d / RESULTS_NAME):
        path = d / RESULTS_NAME
        data = _read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("records"), list):
            raise MergeError(f"{path}: not a pplgate report (no 'records' list)")
        for i, rec in enumerate(data["records"]):
            _check_record(path, i, rec)
        rows = data.get("updates") or []
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise _bad(path, "updates", "is not a list of objects")
        if data.get("updates_blocked") is not None and not isinstance(data["updates_blocked"], str):
            raise _bad(path, "updates_blocked", "is not a string")
        rep.records, rep.update_rows, rep.blocked = data["records"], list(rows), data.get("updates_blocked")
    if _present(d / MANIFEST_NAME):
        m = _read_json(d / MANIFEST_NAME)
        _check_manifest(d / MANIFEST_NAME, m)
        rep.manifest = m
    return rep


def _missing(entry: dict[str, Any], why: str) -> dict[str, Any]:
    return {
        "nodeid": entry["nodeid"],
        "file": entry.get("file"),
        "model": entry.get("model"),
        "profile": entry.get("profile"),
        "variant": entry.get("variant"),
        "status": Status.ERROR.value,
        "error": why,
    }


def _check_manifests(inputs: list[ShardReport], problems: list[str]) -> dict[str, dict[str, Any]]:
    """Shard indexes, counts and entry lists agree; returns the expected entries by node id."""
    with_m = [r for r in inputs if r.manifest]
    if not with_m:
        return {}
    for r in inputs:
        if not r.manifest:
            problems.append(f"{r.dir} has no {MANIFEST_NAME}, the other inputs do: was it run with --pplgate-shard?")
    counts = sorted({int(r.manifest["count"]) for r in with_m})
    if len(counts) > 1:
        problems.append(f"the shards disagree on N: {counts} (every job of the matrix must pass the same N)")
    by_index: dict[int, list[ShardReport]] = defaultdict(list)
    for r in with_m:
        by_index[int(r.manifest["index"])].append(r)
    for k, rs in sorted(by_index.items()):
        if len(rs) > 1:
            problems.append(f"shard {k} was reported {len(rs)} times: {', '.join(str(r.dir) for r in rs)}")
    for k in range(1, max(counts) + 1):
        if k not in by_index:
            problems.append(f"shard {k}/{max(counts)}: no report (did its job run and upload its report directory?)")
    problems += merge_checks.provenance_problems([(r.label, r.manifest) for r in with_m])
    expected: dict[str, dict[str, Any]] = {}
    ref = {e["nodeid"]: e["shard"] for e in with_m[0].manifest["entries"]}
    for r in with_m:
        mine = {e["nodeid"]: e["shard"] for e in r.manifest["entries"]}
        if mine != ref:
            problems.append(
                f"{r.label} selected other entries or split them otherwise than {with_m[0].label}: every shard "
                "must run the same pplgate version with the same baselines and -m/-k selection"
            )
        for e in r.manifest["entries"]:
            expected.setdefault(e["nodeid"], e)
        status = r.manifest.get("exitstatus")
        if status not in (0, None) and not any(x.get("status") in FAILING for x in r.records):
            problems.append(f"{r.label}: pytest exited with status {status} although its gate entries passed")
    return expected


def _key(rec: dict[str, Any]) -> tuple[str, Any, Any]:
    """A record's identity: its node id, and for a ``ppl_regression`` check (a test may check several entries)
    its file and entry."""
    if rec.get("profile") == TESTS:
        return rec["nodeid"], rec.get("file"), rec.get("variant")
    return rec["nodeid"], None, None


def _fixture_tests(inputs: list[ShardReport]) -> dict[str, int]:
    """The tests using the ``ppl_regression`` fixture, by node id, with their shard (from the manifests)."""
    out: dict[str, int] = {}
    for r in inputs:
        out.update((r.manifest or {}).get("fixture_tests") or {})
    return out


def merge(
    inputs: list[ShardReport], rootdir: str | Path | None = None, baselines_dir: str | Path | None = None
) -> Merged:
    """Concatenate the records in input order; check coverage against the manifests. With ``rootdir`` (the
    checkout), every ``pass`` record is judged again against the rules of its current baseline file."""
    problems: list[str] = []
    expected = _check_manifests(inputs, problems)
    fixtures = _fixture_tests(inputs)
    seen: dict[tuple[str, Any, Any], list[ShardReport]] = defaultdict(list)
    records: list[dict[str, Any]] = []
    sources: dict[str, ShardReport] = {}
    for r in inputs:
        for rec in r.records:
            seen[_key(rec)].append(r)
            sources.setdefault(rec["nodeid"], r)
            records.append(rec)
    for (nodeid, _file, variant), rs in seen.items():
        name = nodeid if variant is None else f"{nodeid} (check {variant!r})"
        if len(rs) > 1:
            why = f"reported {len(rs)} times (by {', '.join(x.label for x in rs)}): the shards overlap"
            records.append(_missing(expected.get(nodeid, {"nodeid": nodeid}), why))
            problems.append(f"{name}: {why}")
        elif nodeid in fixtures and rs[0].manifest and fixtures[nodeid] != rs[0].manifest["index"]:
            problems.append(f"{name}: reported by {rs[0].label}, but the manifests put it in shard {fixtures[nodeid]}")
        elif expected and nodeid not in expected and nodeid not in fixtures:
            problems.append(f"{nodeid}: reported by {rs[0].label} but in no shard's manifest")
    present = {int(r.manifest["index"]) for r in inputs if r.manifest}
    count = max((int(r.manifest["count"]) for r in inputs if r.manifest), default=0)
    reported = {k[0] for k in seen}
    for nodeid, e in expected.items():
        if nodeid in reported:
            continue
        shard = f"shard {e['shard']}/{count}"
        if e["shard"] not in present:
            why = f"no result: {shard} did not report"
        else:
            why = f"no result: {shard} selected it, but its report has no record of it (a crashed worker?)"
        records.append(_missing(e, why))
        problems.append(f"{nodeid}: {why}")
    blocked = "; ".join(f"{r.label}: {r.blocked}" for r in inputs if r.blocked) or None
    shards = [
        {
            "dir": str(r.dir),
            "shard": r.manifest["shard"] if r.manifest else None,
            "records": len(r.records),
            "exitstatus": r.manifest.get("exitstatus") if r.manifest else None,
        }
        for r in inputs
    ]
    if not records:
        problems.append("the reports hold no gate record: nothing was judged (did the shards select no entry?)")
    rows = [row for r in inputs for row in r.update_rows]
    notes: list[str] = []
    if rootdir is not None:
        root = Path(rootdir)
        baselines = Path(baselines_dir) if baselines_dir is not None else root / "baselines"
        notes = merge_checks.rejudge(records, lambda file, nodeid: _target(root, baselines, file, nodeid))
    return Merged(records, rows, blocked, problems, shards, notes=notes, sources=sources)


def queued_updates(merged: Merged, rootdir: str | Path = ".", baselines_dir: str | Path | None = None):
    """The updates the shards queued (created/updated records) by target path, every one validated first."""
    root = Path(rootdir)
    baselines = Path(baselines_dir) if baselines_dir is not None else root / "baselines"
    out: dict[Path, list[EntryUpdate]] = defaultdict(list)
    checks = []
    for rec in merged.records:
        if rec.get("status") in (Status.CREATED, Status.UPDATED) and rec.get("update"):
            upd = _update_of(rec)
            path = _target(root, baselines, rec.get("file"), rec["nodeid"])
            if not path.is_file() and upd.section != TESTS:
                raise MergeError(f"{path}: baseline file not found; pass --rootdir, the checkout the shards ran in")
            out[path].append(upd)
            src = merged.sources.get(rec["nodeid"])
            m = (src.manifest if src else None) or {}
            read = (m.get("baselines") or {}).get(rec["file"])
            checks.append((path, rec["file"], upd, src.label if src else "its shard", read, m.get("commit")))
    refusal = merge_checks.stale_update(checks)
    if refusal:
        raise MergeError(refusal)
    return dict(out)


def apply_updates(merged: Merged, rootdir: str | Path, baselines_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Write every queued update into its baseline file, all or nothing; refused unless every entry was
    reported once and every update is valid (:func:`queued_updates`)."""
    if merged.problems:
        raise MergeError(
            "not applying the baseline updates: the shards' coverage is incomplete (see the problems above); "
            "re-run the missing shards, then merge again"
        )
    queued = queued_updates(merged, rootdir, baselines_dir)
    try:
        rows = write_all(queued)
    except (OSError, PplgateError) as exc:
        raise MergeError(f"writing the baseline updates failed ({exc}); every baseline file is as it was") from exc
    root = os.path.realpath(rootdir)
    return [{**r, "file": os.path.relpath(r["file"], root)} for r in rows]


def markdown(merged: Merged) -> str:
    """The merged summary: the verdict, the shards and coverage problems, then the usual gate report."""
    lines = [merged.verdict(), "", "### pplgate: merged shards", "", "| input | shard | records | pytest exit |"]
    lines.append("|---|---|---|---|")
    for s in merged.shards:
        exitstatus = "-" if s["exitstatus"] is None else str(s["exitstatus"])
        lines.append(f"| `{s['dir']}` | {s['shard'] or '-'} | {s['records']} | {exitstatus} |")
    if merged.problems:
        lines += ["", "**Coverage problems**", ""] + [f"- {p}" for p in merged.problems]
    if merged.notes:
        lines += ["", "**Re-judged against the current baseline files**", ""] + [f"- {n}" for n in merged.notes]
    body = reports.markdown(merged.records, merged.update_rows, merged.blocked).split("\n", 1)[1]
    return "\n".join(lines) + "\n" + body


def write(merged: Merged, out: str | Path) -> list[Path]:
    """``pplgate-results.json`` (the shards' format plus a ``merge`` block) and ``pplgate-summary.md``."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    payload = {
        "records": merged.records,
        "updates": merged.update_rows,
        "updates_blocked": merged.blocked,
        "notes": ["merged by `pplgate report merge`; per-window plots are in each shard's report directory"],
        MERGE_KEY: {
            "passed": merged.passed,
            "verdict": merged.verdict(),
            "problems": merged.problems,
            "rejudged": merged.notes,
            "shards": merged.shards,
        },
    }
    (d / RESULTS_NAME).write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    (d / SUMMARY_NAME).write_text(markdown(merged), encoding="utf-8")
    return [d / RESULTS_NAME, d / SUMMARY_NAME]

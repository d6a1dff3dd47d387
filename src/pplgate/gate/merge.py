"""``pplgate report merge``: the JSON reports of several shards (or runs) -> one report and one verdict.

Each input is a ``--pplgate-report`` directory: ``pplgate-results.json`` (the records) and, for a
``--pplgate-shard K/N`` run, ``pplgate-shard.json`` (every selected entry and the shard that runs it).
With manifests the merge proves coverage: every shard 1..N reported once, all shards selected the same
entries, and every entry has exactly one record. An entry without a record, or with several, becomes
an ``error`` record, so it shows in the table and fails the verdict like any other failure.

Queued baseline updates travel in the records (``--update-baselines`` on the shards):
:func:`apply_updates` writes them into the baseline files through :func:`pplgate.gate.store.write_updates`
(locked, atomic, comments kept), and only when the coverage is complete.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pplgate.errors import PplgateError
from pplgate.gate import reports
from pplgate.gate.record import FAILING, Status
from pplgate.gate.shard import MANIFEST_NAME
from pplgate.gate.store import EntryUpdate, write_updates

RESULTS_NAME = "pplgate-results.json"
SUMMARY_NAME = "pplgate-summary.md"
MERGE_KEY = "merge"


class MergeError(PplgateError):
    """The inputs of a merge cannot be read (no report there, malformed JSON)."""


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

    @property
    def passed(self) -> bool:
        return not self.problems and not self.blocked and not any(r.get("status") in FAILING for r in self.records)

    def verdict(self) -> str:
        line = reports.verdict(self.records, self.blocked)
        if self.problems:
            line = line.replace("PASSED", "FAILED") + f", {len(self.problems)} coverage problem(s)"
        return line


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MergeError(f"{path}: cannot read it as JSON ({exc})") from exc


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
    if (d / RESULTS_NAME).is_file():
        data = _read_json(d / RESULTS_NAME)
        if not isinstance(data, dict) or not isinstance(data.get("records"), list):
            raise MergeError(f"{d / RESULTS_NAME}: not a pplgate report (no 'records' list)")
        rep.records = data["records"]
        rep.update_rows = list(data.get("updates") or [])
        rep.blocked = data.get("updates_blocked")
    if (d / MANIFEST_NAME).is_file():
        m = _read_json(d / MANIFEST_NAME)
        if not isinstance(m, dict) or not isinstance(m.get("entries"), list) or "index" not in m:
            raise MergeError(f"{d / MANIFEST_NAME}: not a pplgate shard manifest")
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


def merge(inputs: list[ShardReport]) -> Merged:
    """Concatenate the records in input order; check coverage against the manifests."""
    problems: list[str] = []
    expected = _check_manifests(inputs, problems)
    seen: dict[str, list[ShardReport]] = defaultdict(list)
    records: list[dict[str, Any]] = []
    for r in inputs:
        for rec in r.records:
            seen[rec.get("nodeid", "")].append(r)
            records.append(rec)
    for nodeid, rs in seen.items():
        if len(rs) > 1:
            why = f"reported {len(rs)} times (by {', '.join(x.label for x in rs)}): the shards overlap"
            records.append(_missing(expected.get(nodeid, {"nodeid": nodeid}), why))
            problems.append(f"{nodeid}: {why}")
        elif expected and nodeid not in expected:
            problems.append(f"{nodeid}: reported by {rs[0].label} but in no shard's manifest")
    present = {int(r.manifest["index"]) for r in inputs if r.manifest}
    count = max((int(r.manifest["count"]) for r in inputs if r.manifest), default=0)
    for nodeid, e in expected.items():
        if nodeid in seen:
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
    rows = [row for r in inputs for row in r.update_rows]
    return Merged(records=records, update_rows=rows, blocked=blocked, problems=problems, shards=shards)


def queued_updates(merged: Merged) -> dict[str, list[EntryUpdate]]:
    """The updates the shards queued (created/updated records), by baseline file as the reports name it."""
    out: dict[str, list[EntryUpdate]] = defaultdict(list)
    for rec in merged.records:
        if rec.get("status") in (Status.CREATED, Status.UPDATED) and rec.get("update"):
            out[rec["file"]].append(EntryUpdate.from_dict(rec["update"]))
    return dict(out)


def apply_updates(merged: Merged, rootdir: str | Path) -> list[dict[str, Any]]:
    """Write every queued update into ``rootdir/<file>``; refused unless every entry was reported once."""
    if merged.problems:
        raise MergeError(
            "not applying the baseline updates: the shards' coverage is incomplete (see the problems above); "
            "re-run the missing shards, then merge again"
        )
    rows: list[dict[str, Any]] = []
    for file, updates in sorted(queued_updates(merged).items()):
        path = Path(rootdir) / file
        if not path.is_file():
            raise MergeError(f"{path}: baseline file not found; pass --rootdir, the checkout the shards ran in")
        for row in write_updates(path, updates):
            rows.append({**row, "file": file})
    return rows


def markdown(merged: Merged) -> str:
    """The merged summary: the verdict, the shards and coverage problems, then the usual gate report."""
    lines = [merged.verdict(), "", "### pplgate: merged shards", "", "| input | shard | records | pytest exit |"]
    lines.append("|---|---|---|---|")
    for s in merged.shards:
        exitstatus = "-" if s["exitstatus"] is None else str(s["exitstatus"])
        lines.append(f"| `{s['dir']}` | {s['shard'] or '-'} | {s['records']} | {exitstatus} |")
    if merged.problems:
        lines += ["", "**Coverage problems**", ""] + [f"- {p}" for p in merged.problems]
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
            "shards": merged.shards,
        },
    }
    (d / RESULTS_NAME).write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    (d / SUMMARY_NAME).write_text(markdown(merged), encoding="utf-8")
    return [d / RESULTS_NAME, d / SUMMARY_NAME]

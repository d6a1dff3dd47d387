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
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pplgate.errors import PplgateError
from pplgate.gate import reports
from pplgate.gate.record import FAILING, Status
from pplgate.gate.shard import MANIFEST_NAME
from pplgate.gate.store import TESTS, EntryUpdate, write_all
from pplgate.gate.validator import MAX_NAME_LEN, NAME_RE

MAX_REPORT_BYTES = 256 * 2**20  # a report larger than this is not one pplgate wrote
STATUSES = {s.value for s in Status}
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
    if not path.is_file() or path.stat().st_size > MAX_REPORT_BYTES:
        raise MergeError(f"{path}: not a regular file of at most {MAX_REPORT_BYTES >> 20} MiB (not a pplgate report)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MergeError(f"{path}: cannot read it as JSON ({exc})") from exc


def _present(path: Path) -> bool:
    """A report file is there (a link or a special file counts: :func:`_read_json` refuses it by name)."""
    return path.exists() or path.is_symlink()


def _bad(path: Path, field: str, why: str) -> MergeError:
    return MergeError(f"{path}: {field} {why}; refusing the whole report (was it written by pplgate?)")


def _check_record(path: Path, i: int, rec: Any) -> None:
    """A record's shape, checked before the merge reads any field of it."""
    where = f"records[{i}]"
    if not isinstance(rec, dict):
        raise _bad(path, where, "is not an object")
    if not isinstance(rec.get("nodeid"), str) or not rec["nodeid"]:
        raise _bad(path, f"{where}.nodeid", "is not a non-empty string")
    if rec.get("status") not in STATUSES:
        raise _bad(path, f"{where}.status", f"is {rec.get('status')!r}, not one of {', '.join(sorted(STATUSES))}")
    for key in ("file", "model", "profile", "variant", "error"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            raise _bad(path, f"{where}.{key}", "is not a string")
    if rec.get("update") is not None and not isinstance(rec["update"], dict):
        raise _bad(path, f"{where}.update", "is not an object")


def _check_manifest(path: Path, m: Any) -> None:
    if not isinstance(m, dict) or not isinstance(m.get("entries"), list) or "index" not in m:
        raise MergeError(f"{path}: not a pplgate shard manifest")
    for key in ("index", "count"):
        if isinstance(m.get(key), bool) or not isinstance(m.get(key), int) or m[key] < 1:
            raise _bad(path, key, "is not a positive integer")
    if m["index"] > m["count"] or not isinstance(m.get("shard"), str):
        raise _bad(path, "index/count/shard", "do not describe a shard K/N")
    for i, e in enumerate(m["entries"]):
        if not isinstance(e, dict) or not isinstance(e.get("nodeid"), str) or not e["nodeid"]:
            raise _bad(path, f"entries[{i}].nodeid", "is not a non-empty string")
        if isinstance(e.get("shard"), bool) or not isinstance(e.get("shard"), int):
            raise _bad(path, f"entries[{i}].shard", "is not an integer")
    if m.get("exitstatus") is not None and not isinstance(m["exitstatus"], int):
        raise _bad(path, "exitstatus", "is not an integer")


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
    if not records:
        problems.append("the reports hold no gate record: nothing was judged (did the shards select no entry?)")
    rows = [row for r in inputs for row in r.update_rows]
    return Merged(records=records, update_rows=rows, blocked=blocked, problems=problems, shards=shards)


def _name_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not NAME_RE.match(value) or len(value) > MAX_NAME_LEN:
        return f"{value!r} is not an entry name (letters, digits, '_', '.', '+', '-'; at most {MAX_NAME_LEN})"
    return None


def _update_of(rec: dict[str, Any]) -> EntryUpdate:
    """The record's queued update, every field checked (a report is untrusted)."""
    where = f"the record of {rec['nodeid']!r}"
    u = rec["update"]
    fields = {"profile", "variant", "fingerprint", "ppl", "window_nlls", "provenance", "section", "kld"}
    problems = [f"unknown field(s) {sorted(set(u) - fields)}"] if set(u) - fields else []
    if u.get("section", "profiles") not in ("profiles", TESTS):
        problems.append(f"section {u.get('section')!r} is not 'profiles' or '{TESTS}'")
    problems += [f"{k} {p}" for k in ("variant", "profile") for p in [_name_problem(u.get(k))] if p]
    if not isinstance(u.get("fingerprint"), dict) or not isinstance(u.get("provenance"), dict):
        problems.append("fingerprint/provenance are not objects")
    nlls = u.get("window_nlls")
    if not isinstance(nlls, list) or not nlls or not all(isinstance(x, (int, float)) for x in [u.get("ppl"), *nlls]):
        problems.append("ppl/window_nlls are not numbers")
    if u.get("kld") is not None and not isinstance(u["kld"], dict):
        problems.append("kld is not an object")
    if problems:
        raise MergeError(f"{where}: its update is refused: {'; '.join(problems)}; nothing was written")
    return EntryUpdate.from_dict(u)


def _target(root: Path, baselines: Path, file: Any, nodeid: str) -> Path:
    """``rootdir/<file>``, only where it is a baseline file inside the baselines directory."""
    why = None
    if not isinstance(file, str) or not file:
        why = "names no file"
    elif Path(file).is_absolute() or ".." in Path(file).parts:
        why = "is absolute or climbs with '..'"
    else:
        real = Path(os.path.realpath(root / file))
        if not real.is_relative_to(Path(os.path.realpath(baselines))):
            why = f"resolves to {real}, outside the baselines directory {baselines}"
        elif real.suffix not in (".yaml", ".yml") or (real.exists() and not real.is_file()):
            why = "is not a baseline file (.yaml)"
    if why:
        raise MergeError(f"the record of {nodeid!r}: its file {file!r} {why}; nothing was written")
    return root / file


def queued_updates(merged: Merged, rootdir: str | Path = ".", baselines_dir: str | Path | None = None):
    """The updates the shards queued (created/updated records) by target path, every one validated first."""
    root = Path(rootdir)
    baselines = Path(baselines_dir) if baselines_dir is not None else root / "baselines"
    out: dict[Path, list[EntryUpdate]] = defaultdict(list)
    for rec in merged.records:
        if rec.get("status") in (Status.CREATED, Status.UPDATED) and rec.get("update"):
            upd = _update_of(rec)
            path = _target(root, baselines, rec.get("file"), rec["nodeid"])
            if not path.is_file() and upd.section != TESTS:
                raise MergeError(f"{path}: baseline file not found; pass --rootdir, the checkout the shards ran in")
            out[path].append(upd)
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

"""The shape checks of ``pplgate report merge``'s inputs: a report is untrusted (a fork's pull request can
produce one), so every field is checked before the merge reads it, and an update may only name a baseline
file inside the baselines directory and entry names the collector accepts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pplgate.errors import PplgateError
from pplgate.gate.layers import from_json
from pplgate.gate.record import Status
from pplgate.gate.store import TESTS, EntryUpdate
from pplgate.gate.validator import MAX_NAME_LEN, NAME_RE

MAX_REPORT_BYTES = 256 * 2**20  # a report larger than this is not one pplgate wrote
STATUSES = {s.value for s in Status}


class MergeError(PplgateError):
    """The inputs of a merge cannot be read (no report there, malformed JSON)."""


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
    for key in ("commit", "pplgate_version"):
        if m.get(key) is not None and not isinstance(m[key], str):
            raise _bad(path, key, "is not a string")
    for key, kind in (("baselines", str), ("fixture_tests", int)):
        v = m.get(key, {})
        if not isinstance(v, dict) or not all(isinstance(x, kind) and not isinstance(x, bool) for x in v.values()):
            raise _bad(path, key, f"is not an object of {kind.__name__} values")


def _name_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not NAME_RE.match(value) or len(value) > MAX_NAME_LEN:
        return f"{value!r} is not an entry name (letters, digits, '_', '.', '+', '-'; at most {MAX_NAME_LEN})"
    return None


def _update_of(rec: dict[str, Any]) -> EntryUpdate:
    """The record's queued update, every field checked (a report is untrusted)."""
    where = f"the record of {rec['nodeid']!r}"
    u = rec["update"]
    fields = {"profile", "variant", "fingerprint", "ppl", "window_nlls", "provenance", "section", "kld", "replaces"}
    fields.add("layers")  # the per-module profile (pplgate.gate.layers.compact)
    problems = [f"unknown field(s) {sorted(set(u) - fields)}"] if set(u) - fields else []
    if u.get("section", "profiles") not in ("profiles", TESTS):
        problems.append(f"section {u.get('section')!r} is not 'profiles' or '{TESTS}'")
    problems += [f"{k} {p}" for k in ("variant", "profile") for p in [_name_problem(u.get(k))] if p]
    if not isinstance(u.get("fingerprint"), dict) or not isinstance(u.get("provenance"), dict):
        problems.append("fingerprint/provenance are not objects")
    nlls = u.get("window_nlls")
    if not isinstance(nlls, list) or not nlls or not all(isinstance(x, (int, float)) for x in [u.get("ppl"), *nlls]):
        problems.append("ppl/window_nlls are not numbers")
    for key in ("kld", "replaces"):
        if u.get(key) is not None and not isinstance(u[key], dict):
            problems.append(f"{key} is not an object")
    try:
        u = {**u, "layers": from_json(u["layers"])} if u.get("layers") is not None else u
    except ValueError as exc:
        problems.append(str(exc))
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

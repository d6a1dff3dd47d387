"""What ``pplgate report merge`` checks against the tree it runs on, not only against the reports.

- **Optimistic concurrency** (:func:`stale_update`): a shard's manifest holds the sha256 of every baseline
  file it read, and each queued update the ``recorded:`` block it replaces. Where a file changed since the
  shard read it, every update into that file must still replace the block the file holds now; otherwise
  the entry was re-recorded after the shard ran, and writing would silently drop that value.
- **Same tree, same tool** (:func:`provenance_problems`): shards that ran on different commits or pplgate
  versions are not one run.
- **Re-judging** (:func:`rejudge`): a record marked ``pass`` is judged again, from its own numbers, against
  the rules of the current baseline file (:func:`pplgate.gate.verdict.judge`); the record's ``status`` is
  never trusted on its own.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pplgate.errors import PplgateError
from pplgate.gate.kld import KldMeasured
from pplgate.gate.record import Status
from pplgate.gate.shard import sha256_file
from pplgate.gate.spec import EntrySpec, parse_baseline
from pplgate.gate.store import TESTS, EntryUpdate, node_at, plain, read_raw
from pplgate.gate.verdict import Measured, Target, judge

FIX = "re-run the shards on the current tree, or merge on the commit they ran on"


def _json(value: Any) -> Any:
    """``value`` as JSON has it (what a report carries), so a file's block and a report's compare equal."""
    return json.loads(json.dumps(value, default=str))


def provenance_problems(manifests: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """One problem per manifest field (commit, pplgate version) on which the shards disagree."""
    out = []
    for key, what in (("commit", "commits"), ("pplgate_version", "pplgate versions")):
        values = {label: m.get(key) for label, m in manifests}
        if len(set(values.values())) > 1:
            shown = ", ".join(f"{label}: {v or 'none recorded'}" for label, v in values.items())
            out.append(
                f"the shards ran on different {what} ({shown}): they are not one run; re-run every shard on one "
                "commit with one pplgate version, then merge"
            )
    return out


class _Files:
    """Each target file's sha256 and plain content, read once."""

    def __init__(self) -> None:
        self.cache: dict[Path, tuple[str | None, Any]] = {}

    def get(self, path: Path) -> tuple[str | None, Any]:
        if path not in self.cache:
            self.cache[path] = (sha256_file(path), plain(read_raw(path))) if path.is_file() else (None, None)
        return self.cache[path]


def stale_update(items: Sequence[tuple[Path, str, EntryUpdate, str, str | None, str | None]]) -> str | None:
    """The refusal for the first update whose entry was re-recorded after its shard read the file, else None.

    ``items``: ``(path, file as reported, update, the shard's label, the file's sha256 in the shard's
    manifest (None: not recorded), the shard's commit)``.
    """
    files = _Files()
    for path, rel, upd, label, read_sha, commit in items:
        sha, data = files.get(path)
        if read_sha is not None and sha == read_sha:
            continue  # the file is byte for byte what the shard read
        now = node_at(data, (*upd.keys(), "recorded"))
        if _json(now) == _json(upd.replaces):
            continue  # another part of the file changed; this entry is as the shard saw it
        if now is not None and _json(now) == _json(upd.recorded()):
            continue  # already holds exactly this update (a merge applied twice)
        changed = "its sha256 differs from the one in the manifest" if read_sha else "its sha256 was not recorded"
        where = f"merge on {commit}" if commit else "merge on the commit they ran on"
        return (
            f"{rel}: entry {upd.keypath()} was re-recorded after {label} read the file ({changed}, and the entry's "
            f"recorded block is not the one the update replaces): refusing to overwrite it, nothing was written; "
            f"re-run the shards on the current tree, or {where}"
        )
    return None


# --------------------------------------------------------------------------- re-judging


def _kinds(data: Any) -> list[str]:
    """The variant kinds a file uses (the merge judges numbers; it does not know the registry)."""
    profiles = data.get("profiles") if isinstance(data, Mapping) else None
    out = {"?"}
    for p in (profiles or {}).values() if isinstance(profiles, Mapping) else ():
        variants = p.get("variants") if isinstance(p, Mapping) else None
        for v in (variants or {}).values() if isinstance(variants, Mapping) else ():
            if isinstance(v, Mapping) and isinstance(v.get("kind"), str):
                out.add(v["kind"])
    return sorted(out)


def _numbers(rec: Mapping[str, Any]) -> tuple[float, list[float]] | None:
    ppl, nlls = rec.get("ppl"), rec.get("window_nlls")
    values = [ppl, *nlls] if isinstance(nlls, list) and nlls else []
    if not values or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values):
        return None
    if not all(math.isfinite(x) for x in values):
        return None
    return float(ppl), [float(x) for x in nlls]  # type: ignore[arg-type]


def _kld(rec: Mapping[str, Any], entry: EntrySpec) -> KldMeasured | None:
    block = rec.get("kld")
    if (entry.reference or entry.reference_file) is None or not isinstance(block, Mapping):
        return None
    return KldMeasured(
        reference=str(block["reference"]),
        mean_kld=float(block["mean_kld"]),
        top1_agreement=float(block["top1_agreement"]),
        window_klds=[float(x) for x in block["window_klds"]],
        window_top1=[float(x) for x in block["window_top1"]],
    )


def _session(recs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per metric, the values of a file's records of one profile (the refs of relational/speed/KLD rules)."""
    out: dict[str, dict[str, float]] = {"ppl": {}, "tokens_per_s": {}, "kld": {}, "top1": {}}
    for r in recs:
        v = r.get("variant")
        if not isinstance(v, str):
            continue
        for metric, value in (("ppl", r.get("ppl")), ("tokens_per_s", r.get("tokens_per_s"))):
            if isinstance(value, (int, float)):
                out[metric][v] = float(value)
        k = r.get("kld")
        if isinstance(k, Mapping):
            for metric, key in (("kld", "mean_kld"), ("top1", "top1_agreement")):
                if isinstance(k.get(key), (int, float)):
                    out[metric][v] = float(k[key])
    return out


def _entry(spec: Any, rec: Mapping[str, Any]) -> EntrySpec | None:
    if rec.get("profile") == TESTS:
        return spec.tests.get(rec.get("variant"))
    profile = spec.profiles.get(rec.get("profile"))
    return profile.variants.get(rec.get("variant")) if profile is not None else None


def _verdict(rec: dict[str, Any], entry: EntrySpec, session: dict[str, dict[str, float]], rel: str) -> str | None:
    """Why ``rec``'s numbers fail ``entry``'s current rules, or None when they pass."""
    numbers = _numbers(rec)
    if numbers is None:
        return "it carries no finite ppl and window NLLs to judge"
    ppl, nlls = numbers
    n = rec.get("n_windows") if isinstance(rec.get("n_windows"), int) else len(nlls)
    total = rec.get("n_windows_total") if isinstance(rec.get("n_windows_total"), int) else n
    speed = rec.get("tokens_per_s") if isinstance(rec.get("tokens_per_s"), (int, float)) else None
    section = TESTS if rec.get("profile") == TESTS else "profiles"
    target = Target(
        rec["nodeid"], rec["nodeid"], rel, str(rec.get("model")), "", str(rec.get("profile")), "", 0, section
    )
    m = Measured(ppl, nlls, n, total, entry.fingerprint or {}, "", 0.0, 0.0, speed, None, _kld(rec, entry))
    new = judge(
        target,
        entry,
        m,
        others=session,
        partial=bool(rec.get("partial")),
    )
    if new.status is Status.PASS:
        return None
    failed = [r["text"] for r in new.rules or [] if not r.get("passed")]
    return "; ".join(failed) or (new.message or new.status.value).split("\n")[-1].strip()


def rejudge(records: list[dict[str, Any]], resolve: Callable[[Any, str], Path]) -> list[str]:
    """Judge every ``pass`` record again against its current baseline file; a record that fails becomes ``fail``
    (with the reason in ``error``). ``resolve(file, nodeid)``: the file's path, raising where it may not be read.
    Returns one line per record turned into a failure, naming the entry."""
    notes: list[str] = []
    by_file: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("status") == Status.PASS.value:
            by_file[r.get("file")].append(r)
    for file, recs in by_file.items():
        why_all, spec = None, None
        try:
            path = resolve(file, recs[0]["nodeid"])
            if not path.is_file():
                why_all = f"{file} is not in {path.parent}: pass --rootdir, the checkout the shards ran on"
            else:
                raw = read_raw(path)
                spec = parse_baseline(path, raw, known_kinds=_kinds(raw))
        except PplgateError as exc:
            why_all = f"the current {file} cannot be read ({exc}); fix the file or pass --rootdir, the checkout"
        profile_recs: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for r in records:
            if r.get("file") == file:
                profile_recs[r.get("profile")].append(r)
        for r in recs:
            why = why_all
            entry = _entry(spec, r) if spec is not None else None
            if why is None and entry is None:
                why = f"entry {r.get('profile')}/{r.get('variant')} is no longer in the current {file}; {FIX}"
            if why is None:
                try:
                    failed = _verdict(r, entry, _session(profile_recs[r.get("profile")]), str(file))  # type: ignore[arg-type]
                    why = f"its numbers fail the rules of the current {file}: {failed}; {FIX}" if failed else None
                except (KeyError, TypeError, ValueError, PplgateError) as exc:
                    why = (
                        f"its numbers cannot be judged against the current {file} ({type(exc).__name__}: {exc}); {FIX}"
                    )
            if why is None:
                continue
            r["status"], r["error"] = Status.FAIL.value, f"marked pass by its shard, but {why}"
            notes.append(f"{r['nodeid']}: marked pass by its shard, but {why}")
    return notes

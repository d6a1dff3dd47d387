"""Baseline files on disk: bounded, safe reading and updates that rewrite only the measured blocks.

An update replaces the ``fingerprint:`` and ``recorded:`` blocks of the entries it names and leaves
every other byte of the file as it was: comments, key order, indentation, quoting and line endings
(``\\n`` or ``\\r\\n``). Writes take a per-file lock, re-read the file inside it (so concurrent
writers merge), go through a temp file with fsync and an atomic rename, and follow a symlink to its
target (the link stays a link). Temp files left behind by a killed writer are removed by the next
write of the same file. An update of a ``tests:`` entry (one that a test function checks with the
``ppl_regression`` fixture) creates the entry, the ``tests:`` section or the file when missing.

Reading is bounded: a file over :data:`MAX_FILE_BYTES`, or one that uses YAML anchors/aliases (the
"billion laughs" expansion), is refused before anything is built from it.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pplgate.errors import BaselineError
from pplgate.gate.yamltext import (  # noqa: F401  (re-exported: the readers' names live here too)
    LINE_WIDTH,
    MAX_FILE_BYTES,
    line_of,
    parse_text,
    plain,
    read_raw,
    read_text,
    yaml_rt,
)

NLL_DECIMALS = 6
PPL_DECIMALS = 6
MEASURED_KEYS = ("fingerprint", "recorded")
TESTS = "tests"  # the top-level section of the entries that test functions check (``ppl_regression``)
NEW_FILE_HEADER = (
    "# pplgate baselines. `tests:` holds the entries that test functions check with the ppl_regression\n"
    "# fixture; pplgate writes their fingerprint: and recorded: blocks (never edit those by hand).\n"
    "schema_version: 1\n"
)


@dataclass
class EntryUpdate:
    """New measured fields for one ``profiles.<profile>.variants.<variant>`` entry, or (``section``
    ``tests``) one ``tests.<variant>`` entry, which the write creates when the file lacks it."""

    profile: str
    variant: str
    fingerprint: dict[str, Any]
    ppl: float
    window_nlls: list[float]
    provenance: dict[str, Any]
    section: str = "profiles"
    kld: dict[str, Any] | None = None  # with a reference: the recorded KLD keys (pplgate.gate.kld.recorded_block)
    layers: dict[str, Any] | None = None  # with a reference entry: the per-module profile (gate.layers.compact)
    # the ``recorded:`` block the session read (None: a new entry); the merge refuses a file holding another by then
    replaces: dict[str, Any] | None = None

    def keys(self) -> tuple[str, ...]:
        """The entry's key path in the file."""
        if self.section == TESTS:
            return (TESTS, self.variant)
        return ("profiles", self.profile, "variants", self.variant)

    def keypath(self) -> str:
        return ".".join(self.keys())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["section"] == "profiles":
            del d["section"]  # the default: records of collected entries keep their shape
        for key in ("kld", "layers", "replaces"):  # no reference, no profile, a new entry: left out
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EntryUpdate:
        return cls(**d)

    def recorded(self) -> dict[str, Any]:
        """The ``recorded:`` block as written (numbers rounded to the stored precision)."""
        return {
            "ppl": round(self.ppl, PPL_DECIMALS),
            "window_nlls": [round(x, NLL_DECIMALS) for x in self.window_nlls],
            **(self.kld or {}),
            **({"layers": self.layers} if self.layers else {}),
            "provenance": self.provenance,
        }


# --------------------------------------------------------------------------- splicing


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_content(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith("#")


def _block_end(lines: Sequence[str], start: int, col: int) -> int:
    """Index after the last content line of the block whose key sits on ``lines[start]`` at ``col``.

    Trailing blank and comment lines stay outside the block, so they keep their place.
    """
    end = start + 1
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        ind = _indent(line)
        at_key = ind < col or (ind == col and not line.lstrip().startswith("-"))
        if at_key:
            break
        if _is_content(line):
            end = i + 1
    return end


def _render(key: str, value: Mapping[str, Any], col: int, indent: int, newline: str) -> list[str]:
    """``key: value`` as block-style lines at column ``col`` (nested containers in flow style)."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    def flow(obj: Any) -> Any:
        if isinstance(obj, Mapping):
            cm = CommentedMap((k, flow(v)) for k, v in obj.items())
            cm.fa.set_flow_style()
            return cm
        if isinstance(obj, (list, tuple)):
            cs = CommentedSeq(flow(v) for v in obj)
            cs.fa.set_flow_style()
            return cs
        return obj

    def block(obj: Mapping[str, Any]) -> Any:
        cm = CommentedMap()
        for k, v in obj.items():
            cm[k] = block(v) if k in ("provenance", "layers") and isinstance(v, Mapping) else flow(v)
        return cm

    doc = CommentedMap([(key, block(value))])
    buf = io.StringIO()
    yaml_rt(indent=indent, width=max(60, LINE_WIDTH - col)).dump(doc, buf)
    return [" " * col + ln + newline for ln in buf.getvalue().splitlines()]


def _split_lines(text: str) -> list[str]:
    """Lines with their endings (only ``\\n`` ends a line: a ``\\r`` stays with its ``\\r\\n``)."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def splice_update(path: Path, text: str, upd: EntryUpdate) -> tuple[str, float | None, bool]:
    """Rewrite the ``fingerprint``/``recorded`` blocks of one entry in ``text``.

    Returns ``(new_text, old_ppl, applied)``; ``applied`` is False when the entry is not in the file.
    """
    final_newline = text.endswith("\n") or not text
    data = parse_text(path, text)
    if upd.section == TESTS and node_at(data, upd.keys()) is None:
        text = insert_test_entry(path, text, upd.variant)
        data = parse_text(path, text)
    variants = node_at(data, upd.keys()[:-1])
    vnode = node_at(data, upd.keys())
    if variants is None or vnode is None:
        return text, None, False
    keypath = upd.keypath()
    if not isinstance(vnode, Mapping) or not len(vnode) or vnode.fa.flow_style():
        raise BaselineError(
            path,
            keypath,
            "the entry is written in flow style ({...}); write it in block style so that "
            "--update-baselines can rewrite its measured fields",
            line_of(variants, upd.variant),
        )
    old = vnode.get("recorded")
    old_ppl = old.get("ppl") if isinstance(old, Mapping) else None
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = _split_lines(text)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += newline
    entry_line, entry_col = variants.lc.key(upd.variant)
    first_key = next(iter(vnode))
    key_line, col = vnode.lc.key(first_key)
    if key_line == entry_line:
        raise BaselineError(path, keypath, "the entry's first key shares the line of its name; put it on its own line")
    indent = col - entry_col
    values = {"fingerprint": upd.fingerprint, "recorded": upd.recorded()}
    # replace the blocks that exist, bottom-up so that earlier line numbers stay valid
    present = sorted((vnode.lc.key(k)[0], k) for k in MEASURED_KEYS if k in vnode)
    for start, key in reversed(present):
        end = _block_end(lines, start, col)
        lines[start:end] = _render(key, values[key], col, indent, newline)
    # insert the missing ones in schema order: fingerprint before recorded, at the entry's end otherwise
    if "fingerprint" not in vnode:
        if "recorded" in vnode:
            at = vnode.lc.key("recorded")[0]  # replacing that block kept its first line
        else:
            at = _block_end(lines, entry_line, entry_col)
        lines[at:at] = _render("fingerprint", values["fingerprint"], col, indent, newline)
    if "recorded" not in vnode:
        fresh = parse_text(path, "".join(lines))
        fnode = node_at(fresh, upd.keys())
        at = _block_end(lines, fnode.lc.key("fingerprint")[0], col)
        lines[at:at] = _render("recorded", values["recorded"], col, indent, newline)
    new_text = "".join(lines)
    if not final_newline:  # the file had no final newline: keep it that way
        new_text = new_text[: -len(newline)]
    return new_text, (float(old_ppl) if old_ppl is not None else None), True


def node_at(data: Any, keys: Sequence[str]) -> Any:
    """The node at ``keys`` (None when any step is missing or not a mapping)."""
    for key in keys:
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


def insert_test_entry(path: Path, text: str, name: str) -> str:
    """``text`` with an entry ``tests.<name>`` (a placeholder ``fingerprint: {}``, replaced by the update) at
    the end of the ``tests:`` section, which is added at the end of the file when missing."""
    newline = "\r\n" if "\r\n" in text else "\n"
    if text and not text.endswith("\n"):
        text += newline
    data = parse_text(path, text) if text.strip() else None
    if not isinstance(data, Mapping):
        if data is not None:
            raise BaselineError(path, "", "expected a mapping at the top of the file")
        text, data = text + NEW_FILE_HEADER.replace("\n", newline), {}
    if TESTS not in data:
        text += f"{TESTS}:{newline}"
        data = parse_text(path, text)
    tests = data[TESTS]
    if tests is not None and not isinstance(tests, Mapping):
        raise BaselineError(path, TESTS, "expected a mapping of entry names", line_of(data, TESTS))
    if tests is not None and len(tests) and tests.fa.flow_style():
        raise BaselineError(path, TESTS, "written in flow style ({...}); write it in block style", line_of(data, TESTS))
    lines = _split_lines(text)
    col, inner = 2, 4  # the columns of an entry's name and of its keys: as the file's first entry has them
    if tests:
        first = next(iter(tests))
        col = tests.lc.key(first)[1]
        if tests.lc.key(first)[0] == data.lc.key(TESTS)[0]:
            raise BaselineError(path, TESTS, "put the first entry of tests: on its own line", line_of(data, TESTS))
        node = tests[first]
        inner = node.lc.key(next(iter(node)))[1] if isinstance(node, Mapping) and len(node) else col + 2
    at = _block_end(lines, data.lc.key(TESTS)[0], 0)
    lines[at:at] = [f"{' ' * col}{name}:{newline}", f"{' ' * inner}fingerprint: {{}}{newline}"]
    return "".join(lines)


def _expected(data: Any, updates: Sequence[EntryUpdate]) -> Any:
    want = plain(data)
    for upd in updates:
        if upd.section == TESTS:
            if not isinstance(want, Mapping):
                want = {"schema_version": 1}
            if not isinstance(want.get(TESTS), Mapping):
                want[TESTS] = {}
            want[TESTS].setdefault(upd.variant, {})
        entry = node_at(want, upd.keys())
        if not isinstance(entry, dict):
            continue
        entry["fingerprint"] = plain(upd.fingerprint)
        entry["recorded"] = plain(upd.recorded())
    return want


def apply_updates(path: Path, text: str, updates: Sequence[EntryUpdate]) -> tuple[str, list[dict[str, Any]]]:
    """Splice every update into ``text`` and verify that nothing else in the document changed."""
    before = parse_text(path, text) if text.strip() else None
    rows = []
    for upd in updates:
        text, old, applied = splice_update(path, text, upd)
        rows.append({"profile": upd.profile, "variant": upd.variant, "old": old, "new": upd.ppl, "applied": applied})
    if plain(parse_text(path, text)) != _expected(before, updates):
        raise BaselineError(
            path, "", "internal error: rewriting the measured fields would change other content; file left unchanged"
        )
    return text, rows


# --------------------------------------------------------------------------- writing


def _remove_stale_temps(target: Path) -> None:
    """Temp files of earlier writers of ``target`` that were killed mid-write (called under the lock)."""
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            pass


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory, fsync and ``os.replace`` (never half a file).

    ``text`` is written as is (``newline=""``): line endings are the caller's.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.chmod(tmp, path.stat().st_mode & 0o777)
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def lock_path(target: Path) -> str:
    """The lock file of a baseline file: in the temp directory (per user), never beside the baselines, where
    ``git add -A`` would commit it. One per resolved path, so every writer on this machine shares it."""
    import hashlib

    user = getattr(os, "getuid", lambda: "")()
    d = Path(tempfile.gettempdir()) / f"pplgate-locks{f'-{user}' if user != '' else ''}"
    d.mkdir(mode=0o700, exist_ok=True)
    digest = hashlib.sha256(str(Path(os.path.realpath(target))).encode()).hexdigest()[:32]
    return str(d / f"{digest}.lock")


def write_updates(path: str | Path, updates: Sequence[EntryUpdate], *, lock_timeout: float = 300) -> list[dict]:
    """Merge ``updates`` into the baseline file under a per-file lock.

    A symlink is followed: its target is rewritten and the link stays. The file is re-read *inside*
    the lock, so entries that another process wrote meanwhile are kept; only the entries in
    ``updates`` are replaced. Returns one row per update with the old and new ppl (``applied`` False
    when the entry vanished from the file).
    """
    from filelock import FileLock

    target = Path(os.path.realpath(path))
    creates = any(u.section == TESTS for u in updates)
    if creates:
        target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path(target), timeout=lock_timeout):
        _remove_stale_temps(target)
        text = "" if creates and not target.exists() else read_text(target)
        text, rows = apply_updates(target, text, updates)
        atomic_write_text(target, text)
    return rows


def write_all(files: Mapping[Path, Sequence[EntryUpdate]], *, lock_timeout: float = 300) -> list[dict]:
    """:func:`write_updates` for several files, all or nothing: every file is locked, read and rewritten in
    memory first (any error leaves every file as it was), then written; a write that fails restores the
    files already written. Rows carry their ``file``."""
    from contextlib import ExitStack

    from filelock import FileLock

    targets = {Path(os.path.realpath(p)): list(u) for p, u in files.items()}
    rows: list[dict] = []
    with ExitStack() as stack:
        for target in sorted(targets):
            stack.enter_context(FileLock(lock_path(target), timeout=lock_timeout))
        planned: list[tuple[Path, str | None, str]] = []
        for target, updates in sorted(targets.items()):
            creates = any(u.section == TESTS for u in updates) and not target.exists()
            old = None if creates else read_text(target)
            new, file_rows = apply_updates(target, old or "", updates)
            planned.append((target, old, new))
            rows += [{**r, "file": str(target)} for r in file_rows]
        done: list[tuple[Path, str | None]] = []
        try:
            for target, old, new in planned:
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(target, new)
                done.append((target, old))
        except BaseException:
            for target, old in done:
                if old is None:
                    target.unlink(missing_ok=True)
                else:
                    atomic_write_text(target, old)
            raise
    return rows

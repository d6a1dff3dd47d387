"""Baseline files on disk: bounded, safe reading and updates that rewrite only the measured blocks.

An update replaces the ``fingerprint:`` and ``recorded:`` blocks of the entries it names and leaves
every other byte of the file as it was: comments, key order, indentation, quoting and line endings
(``\\n`` or ``\\r\\n``). Writes take a per-file lock, re-read the file inside it (so concurrent
writers merge), go through a temp file with fsync and an atomic rename, and follow a symlink to its
target (the link stays a link). Temp files left behind by a killed writer are removed by the next
write of the same file.

Reading is bounded: a file over :data:`MAX_FILE_BYTES`, or one that uses YAML anchors/aliases (the
"billion laughs" expansion), is refused before anything is built from it.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pplgate.errors import BaselineError

MAX_FILE_BYTES = 1 << 20  # 1 MiB: a baseline file is a few KiB per model; anything this large is refused
NLL_DECIMALS = 6
PPL_DECIMALS = 6
LINE_WIDTH = 120
MEASURED_KEYS = ("fingerprint", "recorded")


@dataclass
class EntryUpdate:
    """New measured fields for one ``profiles.<profile>.variants.<variant>`` entry."""

    profile: str
    variant: str
    fingerprint: dict[str, Any]
    ppl: float
    window_nlls: list[float]
    provenance: dict[str, Any]
    kld: dict[str, Any] | None = None  # with a reference: the recorded KLD keys (pplgate.gate.kld.recorded_block)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["kld"] is None:
            del out["kld"]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EntryUpdate:
        return cls(**d)

    def recorded(self) -> dict[str, Any]:
        """The ``recorded:`` block as written (numbers rounded to the stored precision)."""
        return {
            "ppl": round(self.ppl, PPL_DECIMALS),
            "window_nlls": [round(x, NLL_DECIMALS) for x in self.window_nlls],
            **(self.kld or {}),
            "provenance": self.provenance,
        }


# --------------------------------------------------------------------------- reading


def yaml_rt(indent: int = 2, width: int = LINE_WIDTH):
    """A ruamel round-trip loader/dumper (comments kept)."""
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = width
    y.indent(mapping=indent, sequence=indent + 2, offset=indent)
    return y


def plain(node: Any) -> Any:
    """ruamel's round-trip containers -> plain dict/list (scalars unchanged)."""
    if isinstance(node, Mapping):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [plain(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def line_of(node: Any, key: Any = None) -> int | None:
    """1-based line of ``node`` (or of its ``key``) in the file, where ruamel knows it."""
    lc = getattr(node, "lc", None)
    if lc is None:
        return None
    try:
        return (lc.key(key)[0] if key is not None else lc.line) + 1
    except Exception:
        return None


def read_text(path: Path) -> str:
    """The file's text, refusing oversized and non-UTF-8 files with the reason and the fix."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise BaselineError(
                path, "", f"file is {size:,} bytes; baseline files are limited to {MAX_FILE_BYTES:,} bytes"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise BaselineError(path, "", f"cannot read: {exc}") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise BaselineError(
            path, "", f"not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}; save the file as UTF-8", line
        ) from exc


def _refuse_anchors(path: Path, text: str) -> None:
    """Anchors and aliases are refused: an aliased tree can expand exponentially ("billion laughs")."""
    from ruamel.yaml.events import AliasEvent

    events = yaml_rt().parse(io.StringIO(text))
    while True:
        try:
            event = next(events)
        except StopIteration:
            return
        except Exception:  # malformed YAML: the loader reports it, with its line
            return
        anchor = getattr(event, "anchor", None)
        if isinstance(event, AliasEvent) or anchor:
            mark = getattr(event, "start_mark", None)
            what = f"alias *{anchor}" if isinstance(event, AliasEvent) else f"anchor &{anchor}"
            raise BaselineError(
                path,
                "",
                f"YAML {what} is not allowed in baseline files (aliases can expand without bound); "
                "write the values out",
                mark.line + 1 if mark is not None else None,
            )


def parse_text(path: Path, text: str) -> Any:
    """Round-trip load of ``text`` (comments kept); malformed YAML -> :class:`BaselineError` with the line."""
    _refuse_anchors(path, text)
    try:
        return yaml_rt().load(text)
    except Exception as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, RecursionError):
            problem = "nested too deeply (a baseline file needs a few levels, not hundreds)"
        dup = re.match(r'found duplicate key "(.*?)" with value', problem, re.S)
        if dup:
            start = getattr(exc, "context_mark", None)
            problem = f"duplicate key {dup.group(1)!r}: a key may appear only once in a mapping" + (
                f" (the mapping starts at line {start.line + 1})" if start is not None else ""
            )
        raise BaselineError(path, "", f"malformed YAML: {problem}", line) from exc


def read_raw(path: str | Path) -> Any:
    """Bounded, safe round-trip load of a baseline file."""
    path = Path(path)
    return parse_text(path, read_text(path))


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
            cm[k] = block(v) if k == "provenance" and isinstance(v, Mapping) else flow(v)
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
    data = parse_text(path, text)
    try:
        variants = data["profiles"][upd.profile]["variants"]
        vnode = variants[upd.variant]
    except (KeyError, TypeError):
        return text, None, False
    keypath = f"profiles.{upd.profile}.variants.{upd.variant}"
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
        fnode = fresh["profiles"][upd.profile]["variants"][upd.variant]
        at = _block_end(lines, fnode.lc.key("fingerprint")[0], col)
        lines[at:at] = _render("recorded", values["recorded"], col, indent, newline)
    new_text = "".join(lines)
    if not text.endswith("\n"):  # the file had no final newline: keep it that way
        new_text = new_text[: -len(newline)]
    return new_text, (float(old_ppl) if old_ppl is not None else None), True


def _expected(data: Any, updates: Sequence[EntryUpdate]) -> Any:
    want = plain(data)
    for upd in updates:
        try:
            entry = want["profiles"][upd.profile]["variants"][upd.variant]
        except (KeyError, TypeError):
            continue
        entry["fingerprint"] = plain(upd.fingerprint)
        entry["recorded"] = plain(upd.recorded())
    return want


def apply_updates(path: Path, text: str, updates: Sequence[EntryUpdate]) -> tuple[str, list[dict[str, Any]]]:
    """Splice every update into ``text`` and verify that nothing else in the document changed."""
    before = parse_text(path, text)
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


def write_updates(path: str | Path, updates: Sequence[EntryUpdate], *, lock_timeout: float = 300) -> list[dict]:
    """Merge ``updates`` into the baseline file under a per-file lock.

    A symlink is followed: its target is rewritten and the link stays. The file is re-read *inside*
    the lock, so entries that another process wrote meanwhile are kept; only the entries in
    ``updates`` are replaced. Returns one row per update with the old and new ppl (``applied`` False
    when the entry vanished from the file).
    """
    from filelock import FileLock

    target = Path(os.path.realpath(path))
    with FileLock(str(target) + ".lock", timeout=lock_timeout):
        _remove_stale_temps(target)
        text, rows = apply_updates(target, read_text(target), updates)
        atomic_write_text(target, text)
    return rows

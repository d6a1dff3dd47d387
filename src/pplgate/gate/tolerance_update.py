"""Writing calibrated tolerances into a baseline file (``pplgate calibrate --update-baselines``).

Each edit replaces one number, the bound of one tolerance rule (``max_delta``, ``max_rel``, ``min_ratio``,
``max_mean``, ``min_agreement``), where the file writes it, and puts a comment line above that rule (replacing
the comment an earlier calibration put there). Every other byte stays as it was. The write goes through
:mod:`pplgate.gate.store`'s per-file lock and atomic replace, and is refused when the file changed since
the caller read it (the measurement took minutes: someone may have edited it meanwhile).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pplgate.errors import BaselineError
from pplgate.gate.store import atomic_write_text, lock_path, node_at, parse_text, plain, read_text

MARK = "# calibrated"  # the first word of the comment a calibration writes (a later one replaces it)
_NUMBER = re.compile(r"[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class ToleranceEdit:
    """Set ``key`` of rule ``index`` of the entry at ``entry`` (its key path) to ``text`` (a YAML float), with
    ``comment`` (one line, without ``#``) above the rule."""

    entry: tuple[str, ...]
    index: int
    key: str
    text: str
    comment: str

    def keypath(self) -> str:
        return ".".join(self.entry) + f".tolerance[{self.index}].{self.key}"


def _line_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in re.finditer("\n", text)]


def apply_edits(path: Path, text: str, edits: Sequence[ToleranceEdit]) -> str:
    """``text`` with every edit made; verified: the document differs from the old one in those bounds only."""
    data = parse_text(path, text)
    starts = _line_starts(text)
    newline = "\r\n" if "\r\n" in text else "\n"
    spans: list[tuple[int, int, str]] = []
    want = plain(data)
    for e in edits:
        tol = node_at(data, (*e.entry, "tolerance"))
        if not isinstance(tol, list) or not 0 <= e.index < len(tol) or e.key not in (tol[e.index] or {}):
            raise BaselineError(path, e.keypath(), "not in the file (edited since it was read?); run calibrate again")
        line, col = tol[e.index].lc.value(e.key)
        at = starts[line] + col
        m = _NUMBER.match(text, at)
        if m is None:
            raise BaselineError(path, e.keypath(), "its value is not a plain number; write it as one", line + 1)
        spans.append((m.start(), m.end(), e.text))
        item_line = tol.lc.item(e.index)[0]
        row = text[starts[item_line] :].split("\n", 1)[0]
        indent = " " * (len(row) - len(row.lstrip(" ")))
        start = end = starts[item_line]
        if item_line > 0 and text[starts[item_line - 1] : start].strip().startswith(MARK):
            start = starts[item_line - 1]  # an earlier calibration's comment: replaced
        spans.append((start, end, f"{indent}{MARK} {e.comment}{newline}"))
        node_at(want, (*e.entry, "tolerance"))[e.index][e.key] = float(e.text)
    for start, end, new in sorted(spans, key=lambda s: (s[0], s[1]), reverse=True):
        text = text[:start] + new + text[end:]
    if plain(parse_text(path, text)) != want:
        raise BaselineError(path, "", "internal error: writing the tolerances would change other content; unchanged")
    return text


def write_edits(path: str | Path, original: str, edits: Sequence[ToleranceEdit], *, lock_timeout: float = 300) -> None:
    """Apply ``edits`` to the file under its lock, atomically; refused when its text is no longer ``original``."""
    from filelock import FileLock

    target = Path(os.path.realpath(path))
    with FileLock(lock_path(target), timeout=lock_timeout):
        now = read_text(target)
        if now != original:
            raise BaselineError(
                path, "", "the file changed since pplgate calibrate read it; nothing written: run calibrate again"
            )
        atomic_write_text(target, apply_edits(target, now, edits))

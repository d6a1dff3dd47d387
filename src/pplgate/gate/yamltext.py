"""Reading baseline files: bounded, safe round-trip YAML (comments kept) and plain conversions.

A file over :data:`MAX_FILE_BYTES`, a non-UTF-8 file, or one that uses YAML anchors/aliases (the
"billion laughs" expansion) is refused before anything is built from it. :mod:`pplgate.gate.store`
re-exports these names.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pplgate.errors import BaselineError

MAX_FILE_BYTES = 1 << 20  # 1 MiB: a baseline file is a few KiB per model; anything this large is refused
LINE_WIDTH = 120


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

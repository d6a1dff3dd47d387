"""Type checks of baseline YAML nodes: every error names the file, the key path and the line.

Used by the schema (:mod:`pplgate.gate.spec`) and by each rule type's ``parse``
(:mod:`pplgate.gate.rules`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from typing import Any, NoReturn

from pplgate.errors import BaselineError
from pplgate.gate.store import line_of

NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")  # model, profile and entry names (they become test ids)
MAX_NAME_LEN = 100  # a test id (and a report's file name) is built from three of them


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (a 400-digit number stays readable)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} characters)"


def real(value: Any) -> float | None:
    """``value`` as a float when it is a YAML number (not a bool); None otherwise; ``inf`` for an int too
    large for a float (so that a finiteness check refuses it instead of raising OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


class Validator:
    """Type checks of YAML nodes; every error is a :class:`BaselineError` naming the file, the key
    path and (where ruamel knows it) the line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def err(self, keypath: str, msg: str, node: Any = None, key: Any = None, *, line: int | None = None) -> NoReturn:
        """Raise the error; its line is ``node``'s (or its ``key``'s) where ruamel knows it, else ``line``."""
        where = line_of(node, key) if node is not None else None
        raise BaselineError(self.path, keypath, msg, where if where is not None else line)

    def mapping(self, node: Any, keypath: str, parent: Any = None, key: Any = None) -> Mapping:
        if not isinstance(node, Mapping):
            self.err(keypath, f"expected a mapping, got {_type_name(node)}", parent, key)
        return node

    def name(self, name: Any, what: str, keypath: str, node: Any = None, key: Any = None) -> str:
        """A model/profile/entry name: letters, digits and ``_.+-``, at most :data:`MAX_NAME_LEN` characters."""
        text = str(name)
        if not NAME_RE.match(text):
            self.err(keypath, f"{what} name {shown(text)} may only contain letters, digits and _.+-", node, key)
        if len(text) > MAX_NAME_LEN:
            self.err(
                keypath,
                f"{what} name {shown(text)} is longer than {MAX_NAME_LEN} characters (it becomes a test id)",
                node,
                key,
            )
        return text

    def named_mappings(self, parent: Mapping, what: str, keypath: str) -> dict[str, tuple[Any, Mapping]]:
        """``parent``'s items by name (each checked by :meth:`name`, each value a mapping).

        Two YAML keys that name the same test (``1`` and ``'1'``) are an error, not one silently lost.
        """
        out: dict[str, tuple[Any, Mapping]] = {}
        for key in parent:
            kp = f"{keypath}.{key}"
            text = self.name(key, what, kp, parent, key)
            if text in out:
                first = line_of(parent, out[text][0])
                self.err(
                    kp,
                    f"{what} name {shown(text)} is given twice (as {shown(out[text][0])}"
                    f"{f' at line {first}' if first else ''} and as {shown(key)}); rename one",
                    parent,
                    key,
                )
            out[text] = (key, self.mapping(parent[key], kp, parent, key))
        return out

    def keys(self, node: Mapping, allowed: set[str] | frozenset[str], keypath: str, required: Sequence[str] = ()):
        for k in node:
            if str(k) not in allowed:
                self.err(
                    f"{keypath}.{k}" if keypath else str(k),
                    f"unknown key {shown(str(k))} (allowed: {', '.join(sorted(allowed))})",
                    node,
                    k,
                )
        for k in required:
            if k not in node or node[k] is None:
                self.err(f"{keypath}.{k}" if keypath else k, "missing required key", node)

    def string(self, node: Mapping, key: str, keypath: str, optional: bool = False) -> str | None:
        v = node.get(key)
        if v is None and optional:
            return None
        if not isinstance(v, str) or not v:
            self.err(f"{keypath}.{key}", f"expected a non-empty string, got {shown(v)}", node, key)
        return str(v)

    def integer(self, node: Mapping, key: str, keypath: str, default: int | None, minimum: int) -> int | None:
        """``node[key]`` as an integer >= ``minimum``; absent or null: ``default``."""
        v = node.get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            self.err(f"{keypath}.{key}", f"expected an integer >= {minimum}, got {shown(v)}", node, key)
        return int(v)

    def number(self, node: Mapping, key: str, keypath: str) -> float | None:
        v = node.get(key)
        if v is None:
            return None
        f = real(v)
        if f is None or not math.isfinite(f) or f < 0:
            self.err(f"{keypath}.{key}", f"expected a non-negative number, got {shown(v)}", node, key)
        return f

    def choice(self, node: Mapping, key: str, keypath: str, allowed: Sequence[str], default: Any) -> Any:
        value = node.get(key, default)
        if value not in allowed:
            self.err(f"{keypath}.{key}", f"expected one of {', '.join(allowed)}, got {shown(value)}", node, key)
        return value


def _type_name(node: Any) -> str:
    """``list``/``str``/...: the YAML-level name of a node's type (not ruamel's CommentedSeq)."""
    if node is None:
        return "null"
    if isinstance(node, Mapping):
        return "mapping"
    if isinstance(node, (list, tuple)):
        return "list"
    if isinstance(node, Set):
        return "set"
    return type(node).__name__

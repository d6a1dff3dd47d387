"""Type checks of baseline YAML nodes: every error names the file, the key path and the line.

Used by the schema (:mod:`pplgate.gate.spec`) and by each rule type's ``parse``
(:mod:`pplgate.gate.rules`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pplgate.errors import BaselineError
from pplgate.gate.store import line_of

NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")  # model, profile and entry names (they become test ids)


class Validator:
    """Type checks of YAML nodes; every error is a :class:`BaselineError` naming the file, the key
    path and (where ruamel knows it) the line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def err(self, keypath: str, msg: str, node: Any = None, key: Any = None) -> NoReturn:
        raise BaselineError(self.path, keypath, msg, line_of(node, key) if node is not None else None)

    def mapping(self, node: Any, keypath: str, parent: Any = None, key: Any = None) -> Mapping:
        if not isinstance(node, Mapping):
            self.err(keypath, f"expected a mapping, got {type(node).__name__}", parent, key)
        return node

    def named_mapping(self, parent: Mapping, name: Any, what: str, keypath: str) -> tuple[str, Mapping]:
        """``parent[name]`` as a mapping, after checking that ``name`` is a valid profile/entry name."""
        if not NAME_RE.match(str(name)):
            self.err(keypath, f"{what} name {str(name)!r} may only contain letters, digits and _.+-", parent, name)
        return str(name), self.mapping(parent[name], keypath, parent, name)

    def keys(self, node: Mapping, allowed: set[str] | frozenset[str], keypath: str, required: Sequence[str] = ()):
        for k in node:
            if str(k) not in allowed:
                self.err(
                    f"{keypath}.{k}" if keypath else str(k),
                    f"unknown key {str(k)!r} (allowed: {', '.join(sorted(allowed))})",
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
            self.err(f"{keypath}.{key}", f"expected a non-empty string, got {v!r}", node, key)
        return str(v)

    def integer(self, node: Mapping, key: str, keypath: str, default: int | None, minimum: int) -> int | None:
        v = node.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            self.err(f"{keypath}.{key}", f"expected an integer >= {minimum}, got {v!r}", node, key)
        return int(v)

    def number(self, node: Mapping, key: str, keypath: str) -> float | None:
        v = node.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            self.err(f"{keypath}.{key}", f"expected a non-negative number, got {v!r}", node, key)
        return float(v)

    def choice(self, node: Mapping, key: str, keypath: str, allowed: Sequence[str], default: Any) -> Any:
        value = node.get(key, default)
        if value not in allowed:
            self.err(f"{keypath}.{key}", f"expected one of {', '.join(allowed)}, got {value!r}", node, key)
        return value

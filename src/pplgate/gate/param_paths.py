"""Paths in a baseline entry's params resolve against the baseline file's folder, like ``model.source``.

``recipe_file`` (llmc-recipe), ``config`` and each of ``code_paths`` (user) and the calibration
``source``/``path`` (a string ``calibration`` too) are file paths: ``$VARS`` and ``~`` expand first, and a
relative result is made absolute against the folder of the YAML file (never the current directory, which
changes with where pytest runs).
``checkpoint`` (awq-checkpoint, hf-checkpoint) is a directory or a hub id: it follows ``model.source``'s rule
(:meth:`pplgate.gate.spec.BaselineSpec.resolve_path`: a local path starts with ``.``, ``$`` or ``~``).
A value that names an unset variable is left as written, for the kind to report (``$PPLGATE_CALIBRATION``
is also looked up in the shared folder); ``pileval``, ``default`` and ``hf:`` calibration sources are no paths.
Fingerprints hash the files' content, never their paths, so resolving changes no fingerprint. Paths given on
the command line (``pplgate compare --variant``) are not rewritten: they resolve against the current directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FILE_PARAMS = ("recipe_file", "config")
SOURCE_PARAMS = ("checkpoint",)
LIST_PARAMS = ("code_paths",)
_CALIBRATION_KEYS = ("source", "path")
_NOT_PATHS = ("pileval", "default", "")


def resolve_file(value: Any, folder: Path, *, source_like: bool = False) -> Any:
    """``value`` made absolute against ``folder`` when it is a relative local path (see the module doc)."""
    if not isinstance(value, str) or value in _NOT_PATHS or value.startswith("hf:"):
        return value
    expanded = os.path.expanduser(os.path.expandvars(value))
    if "$" in expanded or os.path.isabs(expanded):
        return value  # an unset variable (the kind reports it) or already absolute (the kind expands it alike)
    if source_like and not value.startswith((".", "$", "~")):
        return value  # a hub id (or a path relative to the current directory, as model.source)
    return os.path.normpath(os.path.join(os.path.abspath(folder), expanded))


def resolve_param_paths(params: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """``params`` with its path params resolved against ``folder`` (the baseline file's)."""
    out = dict(params)
    for key in FILE_PARAMS:
        if key in out:
            out[key] = resolve_file(out[key], folder)
    for key in SOURCE_PARAMS:
        if key in out:
            out[key] = resolve_file(out[key], folder, source_like=True)
    for key in LIST_PARAMS:
        if isinstance(out.get(key), list):
            out[key] = [resolve_file(v, folder) for v in out[key]]
        elif key in out:
            out[key] = resolve_file(out[key], folder)
    cal = out.get("calibration")
    if isinstance(cal, str):
        out["calibration"] = resolve_file(cal, folder)
    elif isinstance(cal, Mapping):
        out["calibration"] = {k: resolve_file(v, folder) if k in _CALIBRATION_KEYS else v for k, v in cal.items()}
    return out

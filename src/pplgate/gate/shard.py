"""Splitting the gate across CI runners (``--pplgate-shard K/N``): which shard runs which group of tests.

Pure Python (no pytest, no torch): the plugin (:mod:`pplgate.pytest_plugin.shard`) hands in the groups
and their weights, and writes the manifest that ``pplgate report merge`` checks.

- **Gate entries** are grouped by model (their ``xdist_group``), so every entry of a model — and the
  relational rules between them — runs in one shard, and the model loads on one runner only. A group
  weighs its number of selected entries.
- **Other tests** are grouped by their own ``xdist_group`` when they have one (a group named like a
  model follows that model), else by module (the node id's file part), and weigh one per test.
- Assignment is *longest processing time first*: groups sorted by weight (heaviest first, then by
  name), each to the currently lightest shard (the lowest index on a tie). Gate groups and other
  groups are balanced separately (a gate entry costs minutes, a unit test milliseconds). The result
  depends only on the set of (group, weight) pairs, never on collection order or on the runner.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_NAME = "pplgate-shard.json"
MANIFEST_SCHEMA = 1
_SPEC_RE = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str, option: str = "--pplgate-shard") -> ShardSpec:
        """``"2/4"`` -> ``ShardSpec(2, 4)``; anything else is a ``ValueError`` naming the expected form."""
        m = _SPEC_RE.fullmatch(text or "")
        if not m:
            raise ValueError(f"{option} {text!r}: expected K/N, e.g. {option} 1/2 (shard K of N, 1 <= K <= N)")
        k, n = int(m.group(1)), int(m.group(2))
        if n < 1 or not 1 <= k <= n:
            raise ValueError(f"{option} {text}: K must be between 1 and N (N >= 1), e.g. {option} 1/{max(n, 1)}")
        return cls(k, n)


def balance(weights: Mapping[str, float], count: int, loads: list[float] | None = None) -> dict[str, int]:
    """Group -> shard index (1-based), longest processing time first; ``loads`` (0-based) is updated in place."""
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    loads = loads if loads is not None else [0.0] * count
    out: dict[str, int] = {}
    for name in sorted(weights, key=lambda g: (-weights[g], g)):
        best = min(range(count), key=lambda i: (loads[i], i))
        loads[best] += weights[name]
        out[name] = best + 1
    return out


def assign(gate_weights: Mapping[str, float], other_weights: Mapping[str, float], count: int) -> dict[str, int]:
    """Every group's shard: gate groups balanced by their weights, then the other groups by theirs.

    An "other" group whose name is also a gate group goes where that gate group goes.
    """
    out = balance(gate_weights, count)
    rest = {g: w for g, w in other_weights.items() if g not in out}
    out.update(balance(rest, count))
    return out


def module_of(nodeid: str) -> str:
    """The file part of a pytest node id (``tests/test_a.py::TestX::test_y`` -> ``tests/test_a.py``)."""
    return nodeid.split("::", 1)[0]


@dataclass
class GateEntry:
    """One selected gate entry as the manifest lists it."""

    nodeid: str
    model: str
    file: str
    profile: str
    variant: str
    shard: int

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def manifest(
    spec: ShardSpec,
    entries: list[GateEntry],
    *,
    other_tests: int,
    other_tests_here: int,
    groups: Mapping[str, int],
    fixture_tests: Mapping[str, int] | None = None,
    commit: str | None = None,
    version: str | None = None,
    baselines: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """What one shard writes beside its report: every selected gate entry and the shard that runs it, the
    tests that use the ``ppl_regression`` fixture (node id -> shard), and what the shard ran on: the
    ``commit`` (git HEAD, None outside git), the pplgate ``version`` and the sha256 of every baseline file
    it read (path relative to the rootdir -> hex digest), which ``pplgate report merge --apply-updates``
    compares with the files it writes into."""
    loads = [0] * spec.count
    for e in entries:
        loads[e.shard - 1] += 1
    return {
        "schema": MANIFEST_SCHEMA,
        "shard": str(spec),
        "index": spec.index,
        "count": spec.count,
        "entries": [e.to_dict() for e in sorted(entries, key=lambda e: e.nodeid)],
        "entries_per_shard": loads,
        "other_tests": other_tests,
        "other_tests_here": other_tests_here,
        "groups": dict(sorted(groups.items())),
        "fixture_tests": dict(sorted((fixture_tests or {}).items())),
        "commit": commit,
        "pplgate_version": version,
        "baselines": dict(sorted((baselines or {}).items())),
        "exitstatus": None,  # filled in at the end of the session
    }


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

"""Baseline files (``baselines/<model>.yaml``): schema, validation, tolerance rules, updates.

Schema (``schema_version: 1``; see docs/GATE.md for a full example)::

    schema_version: 1
    model: {name, source, gguf_file?, revision?, tokenizer?}
    profiles:
      <profile>:
        marker: smoke | gpu
        device: cpu | cuda | cuda:N
        seqlen: 2048
        batch_size: 1
        max_windows: null            # null = all windows
        variants:
          <variant>:
            kind: fp32               # a registered variant kind
            params: {}               # the kind's parameters
            tolerance:               # >= 1 rule; all must pass
              - {type: absolute, max_delta: 0.001}
            fingerprint: {...}       # written by --update-baselines
            recorded: {ppl, window_nlls, provenance}   # written by --update-baselines

Files are read with ruamel.yaml in round-trip mode so that ``--update-baselines`` can rewrite
``fingerprint``/``recorded`` while keeping the user's comments, ordering and tolerances.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pplgate.errors import BaselineError
from pplgate.gate.store import (  # noqa: F401 - re-exported for the plugin and tests
    NLL_DECIMALS,
    PPL_DECIMALS,
    EntryUpdate,
    atomic_write_text,
    read_raw,
    write_updates,
)
from pplgate.gate.store import line_of as _line
from pplgate.gate.store import plain as _plain

SCHEMA_VERSION = 1
NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")
MARKERS = ("smoke", "gpu")
RULE_TYPES = ("absolute", "relative", "relational")
DIRECTIONS = ("both", "worse")

# Fields of the protocol fingerprint, in the order they are written and compared.
FINGERPRINT_FIELDS = (
    "dataset_sha256",
    "n_tokens",
    "n_windows",
    "n_windows_total",
    "bos_added",
    "tokenizer_name",
    "tokenizer_sha256",
    "seqlen",
    "dtype",
    "variant",
)

_TOP_KEYS = {"schema_version", "model", "profiles"}
_MODEL_KEYS = {"name", "source", "gguf_file", "revision", "tokenizer"}
_PROFILE_KEYS = {"marker", "device", "device_map", "seqlen", "batch_size", "max_windows", "variants"}
_VARIANT_KEYS = {"kind", "params", "tolerance", "fingerprint", "recorded"}
_RECORDED_KEYS = {"ppl", "window_nlls", "provenance"}
_RULE_KEYS = {"type", "max_delta", "max_rel", "direction", "ref"}


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class RuleResult:
    rule: Rule
    passed: bool
    text: str


@dataclass(frozen=True)
class Rule:
    """One tolerance rule. All rules of a variant must pass.

    * ``absolute``: ``ppl - recorded`` within ``max_delta``;
    * ``relative``: ``(ppl - recorded) / recorded`` within ``max_rel``;
    * ``relational``: ``ppl - ppl(ref)`` (``ref`` measured in the same session) within
      ``max_delta`` (or ``max_rel`` of the reference).

    ``direction: both`` bounds the absolute value; ``worse`` only bounds increases (a lower
    perplexity always passes). Defaults: ``both`` for absolute/relative (a deterministic number
    that moves in either direction means something changed), ``worse`` for relational.
    """

    type: str
    max_delta: float | None = None
    max_rel: float | None = None
    direction: str = "both"
    ref: str | None = None

    @property
    def needs_recorded(self) -> bool:
        return self.type != "relational"

    def describe(self) -> str:
        bound = f"{self.max_delta:g}" if self.max_delta is not None else f"{self.max_rel * 100:g}%"
        if self.type == "relational":
            what = (
                f"ppl - ppl[{self.ref}]" if self.max_delta is not None else f"(ppl - ppl[{self.ref}]) / ppl[{self.ref}]"
            )
        elif self.type == "absolute":
            what = "ppl - recorded"
        else:
            what = "(ppl - recorded) / recorded"
        if self.direction == "both":
            return f"{self.type}: |{what}| <= {bound}"
        return f"{self.type}: {what} <= {bound} (only worse counts)"

    def short(self) -> str:
        sign = "±" if self.direction == "both" else "+"
        if self.type == "relational":
            b = f"{self.max_delta:g}" if self.max_delta is not None else f"{self.max_rel:.2%}"
            return f"{self.ref}{sign}{b}"
        if self.type == "absolute":
            return f"{sign}{self.max_delta:g}"
        return f"{sign}{self.max_rel:.2%}"

    def check(self, ppl: float, recorded: float | None, ref_ppl: float | None) -> RuleResult:
        base = ref_ppl if self.type == "relational" else recorded
        if base is None:
            return RuleResult(self, False, f"[FAIL] {self.describe()}: no reference value")
        diff = ppl - base
        if self.max_delta is not None:
            value, bound, fmt = diff, self.max_delta, "{:+.6f}"
        else:
            value, bound, fmt = diff / base, self.max_rel, "{:+.4%}"
        measured = abs(value) if self.direction == "both" else value
        passed = math.isfinite(measured) and measured <= bound
        ref_txt = f"; {self.ref} measured {base:.6f} in this session" if self.type == "relational" else ""
        text = f"[{'PASS' if passed else 'FAIL'}] {self.describe()}: got {fmt.format(value)}{ref_txt}"
        return RuleResult(self, passed, text)


# --------------------------------------------------------------------------- specs


@dataclass
class ModelSpec:
    name: str
    source: str
    gguf_file: str | None = None
    revision: str | None = None
    tokenizer: str | None = None


@dataclass
class Recorded:
    ppl: float
    window_nlls: list[float]
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class VariantSpec:
    name: str
    kind: str
    params: dict[str, Any]
    rules: list[Rule]
    fingerprint: dict[str, Any] | None
    recorded: Recorded | None
    line: int | None = None

    @property
    def refs(self) -> list[str]:
        return [r.ref for r in self.rules if r.type == "relational" and r.ref]


@dataclass
class ProfileSpec:
    name: str
    marker: str
    device: str
    seqlen: int
    batch_size: int
    max_windows: int | None
    variants: dict[str, VariantSpec]
    device_map: str | None = None  # auto | balanced | sequential: spread the model over the worker's GPUs


@dataclass
class BaselineSpec:
    path: Path
    model: ModelSpec
    profiles: dict[str, ProfileSpec]

    def resolve_path(self, value: str | None) -> str | None:
        """Expand ``$VARS``/``~``; a relative local path is relative to the baseline file's directory."""
        if value is None:
            return None
        expanded = os.path.expanduser(os.path.expandvars(value))
        if "$" in expanded:
            raise BaselineError(self.path, "model", f"{value!r}: environment variable not set")
        if value.startswith((".", "$", "~")) and not os.path.isabs(expanded):
            return str((self.path.parent / expanded).resolve())
        return expanded


class _V:
    """Validation helper carrying the file path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def err(self, keypath: str, msg: str, node: Any = None, key: Any = None):
        raise BaselineError(self.path, keypath, msg, _line(node, key) if node is not None else None)

    def mapping(self, node: Any, keypath: str, parent: Any = None, key: Any = None) -> Mapping:
        if not isinstance(node, Mapping):
            self.err(keypath, f"expected a mapping, got {type(node).__name__}", parent, key)
        return node

    def named_mapping(self, parent: Mapping, name: Any, what: str, keypath: str) -> tuple[str, Mapping]:
        """``parent[name]`` as a mapping, after checking that ``name`` is a valid profile/variant name."""
        if not NAME_RE.match(str(name)):
            self.err(keypath, f"{what} name {str(name)!r} may only contain letters, digits and _.+-", parent, name)
        return str(name), self.mapping(parent[name], keypath, parent, name)

    def keys(self, node: Mapping, allowed: set[str], keypath: str, required: Sequence[str] = ()) -> None:
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


def _parse_rule(v: _V, node: Any, keypath: str, parent: Any, idx: int) -> Rule:
    node = v.mapping(node, keypath, parent, idx)
    v.keys(node, _RULE_KEYS, keypath, required=("type",))
    kind = node["type"]
    if kind not in RULE_TYPES:
        v.err(f"{keypath}.type", f"unknown rule type {kind!r} (allowed: {', '.join(RULE_TYPES)})", node, "type")
    max_delta, max_rel = v.number(node, "max_delta", keypath), v.number(node, "max_rel", keypath)
    if kind == "absolute" and (max_delta is None or max_rel is not None):
        v.err(keypath, "an absolute rule takes max_delta (and no max_rel)", node)
    if kind == "relative" and (max_rel is None or max_delta is not None):
        v.err(keypath, "a relative rule takes max_rel (and no max_delta)", node)
    if kind == "relational":
        if (max_delta is None) == (max_rel is None):
            v.err(keypath, "a relational rule takes exactly one of max_delta / max_rel", node)
        ref = v.string(node, "ref", keypath)
    else:
        ref = None
        if "ref" in node:
            v.err(f"{keypath}.ref", f"only relational rules take ref (this is {kind})", node, "ref")
    direction = node.get("direction", "worse" if kind == "relational" else "both")
    if direction not in DIRECTIONS:
        v.err(f"{keypath}.direction", f"expected one of {', '.join(DIRECTIONS)}, got {direction!r}", node, "direction")
    return Rule(type=kind, max_delta=max_delta, max_rel=max_rel, direction=direction, ref=ref)


def _parse_recorded(v: _V, node: Any, keypath: str, parent: Any) -> Recorded | None:
    if node is None:
        return None
    node = v.mapping(node, keypath, parent, "recorded")
    v.keys(node, _RECORDED_KEYS, keypath, required=("ppl", "window_nlls"))
    ppl = node["ppl"]
    if isinstance(ppl, bool) or not isinstance(ppl, (int, float)) or not ppl > 0:
        v.err(f"{keypath}.ppl", f"expected a positive number, got {ppl!r}", node, "ppl")
    nlls = node["window_nlls"]
    if not isinstance(nlls, list) or not nlls or not all(isinstance(x, (int, float)) for x in nlls):
        v.err(f"{keypath}.window_nlls", "expected a non-empty list of numbers", node, "window_nlls")
    prov = node.get("provenance") or {}
    return Recorded(ppl=float(ppl), window_nlls=[float(x) for x in nlls], provenance=_plain(prov))


def parse_baseline(path: str | Path, data: Any = None, *, known_kinds: Sequence[str] | None = None) -> BaselineSpec:
    """Validate a baseline file and return its spec (raises :class:`BaselineError`)."""
    path = Path(path)
    if data is None:
        data = read_raw(path)
    if known_kinds is None:
        from pplgate.models.registry import known_kinds as registered_kinds

        known_kinds = registered_kinds()
    v = _V(path)
    if data is None:
        v.err("", "the file is empty")
    top = v.mapping(data, "")
    v.keys(top, _TOP_KEYS, "", required=("schema_version", "model", "profiles"))
    if top["schema_version"] != SCHEMA_VERSION:
        v.err(
            "schema_version",
            f"unsupported schema_version {top['schema_version']!r} (this pplgate reads {SCHEMA_VERSION})",
            top,
            "schema_version",
        )

    m = v.mapping(top["model"], "model", top, "model")
    v.keys(m, _MODEL_KEYS, "model", required=("name", "source"))
    name = v.string(m, "name", "model")
    if not NAME_RE.match(name):
        v.err("model.name", f"{name!r} may only contain letters, digits and _.+-", m, "name")
    model = ModelSpec(
        name=name,
        source=v.string(m, "source", "model"),
        gguf_file=v.string(m, "gguf_file", "model", optional=True),
        revision=v.string(m, "revision", "model", optional=True),
        tokenizer=v.string(m, "tokenizer", "model", optional=True),
    )

    profiles_node = v.mapping(top["profiles"], "profiles", top, "profiles")
    if not profiles_node:
        v.err("profiles", "at least one profile is needed", top, "profiles")
    profiles: dict[str, ProfileSpec] = {}
    for pkey in profiles_node:
        kp = f"profiles.{pkey}"
        pname, pnode = v.named_mapping(profiles_node, pkey, "profile", kp)
        v.keys(pnode, _PROFILE_KEYS, kp, required=("device", "variants"))
        device = v.string(pnode, "device", kp)
        marker = pnode.get("marker", "gpu" if device.startswith("cuda") else "smoke")
        if marker not in MARKERS:
            v.err(f"{kp}.marker", f"expected one of {', '.join(MARKERS)}, got {marker!r}", pnode, "marker")
        variants_node = v.mapping(pnode["variants"], f"{kp}.variants", pnode, "variants")
        if not variants_node:
            v.err(f"{kp}.variants", "at least one variant is needed", pnode, "variants")
        variants: dict[str, VariantSpec] = {}
        for vkey in variants_node:
            vkp = f"{kp}.variants.{vkey}"
            vname, vnode = v.named_mapping(variants_node, vkey, "variant", vkp)
            v.keys(vnode, _VARIANT_KEYS, vkp, required=("kind",))
            kind = v.string(vnode, "kind", vkp)
            if kind not in known_kinds:
                v.err(f"{vkp}.kind", f"unknown variant kind {kind!r} (known: {', '.join(known_kinds)})", vnode, "kind")
            params = vnode.get("params") or {}
            v.mapping(params, f"{vkp}.params", vnode, "params")
            tol = vnode.get("tolerance")
            if not tol:
                v.err(
                    f"{vkp}.tolerance",
                    "missing tolerance: give at least one rule, e.g. [{type: absolute, max_delta: 0.01}]",
                    vnode,
                )
            if not isinstance(tol, list):
                v.err(f"{vkp}.tolerance", "expected a list of rules", vnode, "tolerance")
            rules = [_parse_rule(v, r, f"{vkp}.tolerance[{i}]", tol, i) for i, r in enumerate(tol)]
            fp = vnode.get("fingerprint")
            if fp is not None:
                v.mapping(fp, f"{vkp}.fingerprint", vnode, "fingerprint")
            variants[vname] = VariantSpec(
                name=vname,
                kind=kind,
                params=_plain(params),
                rules=rules,
                fingerprint=_plain(fp) if fp is not None else None,
                recorded=_parse_recorded(v, vnode.get("recorded"), f"{vkp}.recorded", vnode),
                line=_line(variants_node, vname),
            )
        # relational references: known variants of this profile, no self-reference, no cycles
        for vs in variants.values():
            for i, r in enumerate(vs.rules):
                if r.type != "relational":
                    continue
                rkp = f"{kp}.variants.{vs.name}.tolerance[{i}].ref"
                if r.ref not in variants:
                    v.err(
                        rkp,
                        f"relational rule references unknown variant {r.ref!r} "
                        f"(variants of profile {pname}: {', '.join(variants)})",
                    )
                if r.ref == vs.name:
                    v.err(rkp, "a variant cannot be relative to itself")
        for vs in variants.values():
            seen, stack = set(), list(vs.refs)
            while stack:
                ref = stack.pop()
                if ref == vs.name:
                    v.err(f"{kp}.variants.{vs.name}.tolerance", "relational rules form a cycle")
                if ref not in seen:
                    seen.add(ref)
                    stack.extend(variants[ref].refs)
        profiles[pname] = ProfileSpec(
            name=pname,
            marker=marker,
            device=device,
            seqlen=v.integer(pnode, "seqlen", kp, 2048, 2),
            batch_size=v.integer(pnode, "batch_size", kp, 1, 1),
            max_windows=v.integer(pnode, "max_windows", kp, None, 1),
            variants=variants,
            device_map=_device_map(path, pnode, kp),
        )
    return BaselineSpec(path=path, model=model, profiles=profiles)


def _device_map(path: Path, pnode: Any, kp: str) -> str | None:
    from pplgate.models.source import DEVICE_MAPS

    value = pnode.get("device_map")
    if value is not None and value not in DEVICE_MAPS:
        raise BaselineError(
            path, f"{kp}.device_map", f"must be one of {', '.join(DEVICE_MAPS)} or absent, got {value!r}"
        )
    return value


def load_baseline(path: str | Path) -> BaselineSpec:
    return parse_baseline(path)


# --------------------------------------------------------------------------- fingerprints


def compare_fingerprints(
    recorded: Mapping[str, Any] | None, current: Mapping[str, Any], ignore: Sequence[str] = ()
) -> list[tuple[str, Any, Any]]:
    """Fields whose value changed, as ``(field, old, new)``; a missing recorded field counts too.

    Nested mappings (the variant's fingerprint) are compared key by key, so a change reads as
    ``variant.calibration.n_samples: 16 -> 32`` rather than as two whole dicts; a key present on
    one side only shows the other side as the string ``ABSENT``.
    """
    if recorded is None:
        return []
    out: list[tuple[str, Any, Any]] = []
    for key in FINGERPRINT_FIELDS:
        if key not in ignore:
            _diff(key, recorded.get(key, _MISSING), current.get(key, _MISSING), out)
    return out


_MISSING = object()
ABSENT = "ABSENT"  # plain string: drift records travel between xdist workers and into JSON


def _diff(path: str, old: Any, new: Any, out: list[tuple[str, Any, Any]]) -> None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for k in [*old, *(k for k in new if k not in old)]:
            _diff(f"{path}.{k}", old.get(k, _MISSING), new.get(k, _MISSING), out)
    elif old is _MISSING and new is _MISSING:
        return
    elif old is _MISSING or new is _MISSING or old != new:
        out.append((path, ABSENT if old is _MISSING else old, ABSENT if new is _MISSING else new))


def describe_drift(changes: Sequence[tuple[str, Any, Any]]) -> str:
    """The changed field names, for a one-line summary (the values go on lines of their own)."""
    return ", ".join(k for k, _, _ in changes)

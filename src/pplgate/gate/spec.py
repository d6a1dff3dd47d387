"""Baseline files (``baselines/<model>.yaml``): the schema and its validation.

Schema (``schema_version: 1``; see docs/GATE.md for a full example)::

    schema_version: 1
    model: {name, source, gguf_file?, revision?, tokenizer?}
    profiles:
      <profile>:
        marker: smoke | gpu
        device: cpu | cuda | cuda:N
        device_map: auto | balanced | sequential   # optional: spread the model over the worker's GPUs
        seqlen: 2048
        batch_size: 1
        max_windows: null            # null = all windows
        variants:
          <entry>:
            kind: fp32               # a registered variant kind
            params: {}               # the kind's parameters
            reference: fp16          # optional: another entry of the profile; KLD/top-1 against it
            tolerance:               # >= 1 rule; all must pass (pplgate.gate.rules)
              - {type: absolute, max_delta: 0.001}
            fingerprint: {...}       # written by --update-baselines
            recorded: {ppl, window_nlls, layers, provenance}   # written by --update-baselines
                                     # (+ mean_kld, top1_agreement, window_klds, window_top1 with a reference)
    tests:                           # entries that test functions check (the ppl_regression fixture)
      <name>:
        tolerance: [...]             # optional: else the check's tolerance= (exactly one of the two)
        fingerprint: {...}           # written by pplgate
        recorded: {...}              # written by pplgate

A file needs ``profiles:`` (with ``model:``) or ``tests:``, or both. ``tests:`` entries are not
collected: their test functions measure them.

The YAML key is ``variants:``; one item of it is an *entry* (:class:`EntrySpec`): a variant kind
with its parameters, tolerance rules and recorded numbers. (The quantization strategy that a kind
names is a different thing, the ``Variant`` class of the measuring side.)

Files are read by :mod:`pplgate.gate.store` (bounded, comments kept); this module only validates.
The variant kinds that exist are the caller's knowledge (``known_kinds``): validating a file
imports no model code.
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
from pplgate.gate.kld import RECORDED_KLD_KEYS, RecordedKld, parse_recorded_kld
from pplgate.gate.kld_rules import COMPARISON_METRICS
from pplgate.gate.layers import parse_layers
from pplgate.gate.param_paths import resolve_file, resolve_param_paths
from pplgate.gate.rules import Rule, parse_rule
from pplgate.gate.spec_refs import check_refs
from pplgate.gate.store import line_of, plain, read_raw
from pplgate.gate.validator import NAME_RE, Validator, real, shown

__all__ = [
    "DEVICE_MAPS",
    "DEVICE_RE",
    "MARKERS",
    "NAME_RE",
    "SCHEMA_VERSION",
    "BaselineSpec",
    "EntrySpec",
    "ModelSpec",
    "ProfileSpec",
    "Recorded",
    "Validator",
    "parse_baseline",
]

SCHEMA_VERSION = 1
MARKERS = ("smoke", "gpu")
# profile ``device_map`` values (accelerate's placements over the worker's GPUs); the model loader accepts these
DEVICE_MAPS = ("auto", "balanced", "sequential")
DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")  # a profile's device (and --pplgate-device)
RERECORD = (
    "these numbers are written by --update-baselines, never by hand: delete the entry's fingerprint: and "
    "recorded: blocks and re-record it with pytest --update-baselines"
)

_TOP_KEYS = {"schema_version", "model", "profiles", "tests"}
_MODEL_KEYS = {"name", "source", "gguf_file", "revision", "tokenizer"}
_PROFILE_KEYS = {"marker", "device", "device_map", "seqlen", "batch_size", "max_windows", "variants"}
_ENTRY_KEYS = {"kind", "params", "reference", "tolerance", "fingerprint", "recorded"}
_TEST_KEYS = {"tolerance", "fingerprint", "recorded"}
_RECORDED_KEYS = {"ppl", "window_nlls", "provenance", "layers"}  # + RECORDED_KLD_KEYS with a reference


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
    kld: RecordedKld | None = None  # with a reference: the recorded KLD / top-1 (pplgate.gate.kld)
    layers: dict[str, float] | None = None  # module name -> output error vs the reference (gate.layers)
    raw: dict[str, Any] | None = field(default=None, compare=False, repr=False)  # the block as in the file


@dataclass
class EntrySpec:
    """One ``profiles.<profile>.variants.<name>`` entry of a baseline file."""

    name: str
    kind: str
    params: dict[str, Any]
    rules: list[Rule]
    fingerprint: dict[str, Any] | None
    recorded: Recorded | None
    line: int | None = None
    rule_lines: list[int | None] = field(default_factory=list)  # the line of each tolerance rule
    reference: str | None = None  # the entry of the profile this one is compared with (KLD, top-1)
    reference_file: str | None = None  # or a stored reference (``reference: {file: PATH}``), the path resolved

    @property
    def refs(self) -> list[str]:
        """Entries of the same profile this one needs measured in the session: those its relational
        rules compare with, and its reference."""
        return [ref for rule in self.rules for ref in rule.refs] + ([self.reference] if self.reference else [])

    def tolerance_text(self) -> str:
        """``±0.001, fp32+0.50%``: the rules in a table cell."""
        return ", ".join(r.short() for r in self.rules)


@dataclass
class ProfileSpec:
    name: str
    marker: str
    device: str
    seqlen: int
    batch_size: int
    max_windows: int | None
    variants: dict[str, EntrySpec]
    device_map: str | None = None  # one of DEVICE_MAPS: spread the model over the worker's GPUs


@dataclass
class BaselineSpec:
    path: Path
    model: ModelSpec | None  # None: a file of ``tests:`` entries only
    profiles: dict[str, ProfileSpec]
    tests: dict[str, EntrySpec] = field(default_factory=dict)  # kind ``?``: the check knows what it measures

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


# --------------------------------------------------------------------------- validation


def parse_baseline(path: str | Path, data: Any = None, *, known_kinds: Sequence[str]) -> BaselineSpec:
    """Validate a baseline file (read from ``path`` unless ``data`` is given) and return its spec.

    ``known_kinds``: the registered variant kinds (an entry of another kind is an error).
    Raises :class:`BaselineError`.
    """
    path = Path(path)
    if data is None:
        data = read_raw(path)
    v = Validator(path)
    if data is None:
        v.err("", "the file is empty")
    top = v.mapping(data, "")
    needed = ("schema_version",) if "tests" in top else ("schema_version", "model", "profiles")
    v.keys(top, _TOP_KEYS, "", required=needed)
    version = top["schema_version"]
    if isinstance(version, str) and version.strip() == str(SCHEMA_VERSION):
        v.err(
            "schema_version",
            f"expected the integer {SCHEMA_VERSION}, got the string {shown(version)}: write schema_version: "
            f"{SCHEMA_VERSION} without quotes",
            top,
            "schema_version",
        )
    if type(version) is not int or version != SCHEMA_VERSION:  # not True, not 1.0
        v.err(
            "schema_version",
            f"unsupported schema_version {shown(version)} (this pplgate reads the integer {SCHEMA_VERSION})",
            top,
            "schema_version",
        )
    tests = _parse_tests(v, top)
    if "profiles" not in top:
        if "model" in top:
            v.err("profiles", "model: is given but profiles: is missing (they go together)", top, "model")
        return BaselineSpec(path=path, model=None, profiles={}, tests=tests)
    v.keys(top, _TOP_KEYS, "", required=("model",))
    model = _parse_model(v, v.mapping(top["model"], "model", top, "model"))
    profiles_node = v.mapping(top["profiles"], "profiles", top, "profiles")
    if not profiles_node:
        v.err("profiles", "at least one profile is needed", top, "profiles")
    profiles: dict[str, ProfileSpec] = {}
    for pname, (pkey, pnode) in v.named_mappings(profiles_node, "profile", "profiles").items():
        profiles[pname] = _parse_profile(v, pname, pnode, f"profiles.{pkey}", known_kinds)
    for profile in profiles.values():
        check_refs(v, profile, profiles)
    return BaselineSpec(path=path, model=model, profiles=profiles, tests=tests)


def _parse_tests(v: Validator, top: Mapping) -> dict[str, EntrySpec]:
    """The ``tests:`` section: entries of ``ppl_regression.check`` (tolerance optional, refs among them)."""
    node = top.get("tests")
    if node is None:
        return {}
    node = v.mapping(node, "tests", top, "tests")
    tests: dict[str, EntrySpec] = {}
    for name, (key, enode) in v.named_mappings(node, "test entry", "tests").items():
        kp = f"tests.{key}"
        v.keys(enode, _TEST_KEYS, kp)
        tol = enode.get("tolerance")
        if tol is not None and not isinstance(tol, list):
            v.err(f"{kp}.tolerance", "expected a list of rules", enode, "tolerance")
        rules = [parse_rule(v, r, f"{kp}.tolerance[{i}]", tol, i) for i, r in enumerate(tol or [])]
        for i, rule in enumerate(rules):
            if rule.metric in COMPARISON_METRICS:
                msg = f"a {rule.type} rule compares with an entry's reference: only entries of profiles: name one"
                v.err(f"{kp}.tolerance[{i}]", msg, line=line_of(tol, i))
        fp = enode.get("fingerprint")
        if fp is not None:
            v.mapping(fp, f"{kp}.fingerprint", enode, "fingerprint")
        tests[name] = EntrySpec(
            name=name,
            kind="?",
            params={},
            rules=rules,
            fingerprint=plain(fp) if fp else None,
            recorded=_parse_recorded(v, enode.get("recorded"), f"{kp}.recorded", enode, False),
            line=line_of(node, key),
            rule_lines=[line_of(tol, i) for i in range(len(tol or []))],
        )
    return tests


def _parse_model(v: Validator, m: Mapping) -> ModelSpec:
    v.keys(m, _MODEL_KEYS, "model", required=("name", "source"))
    return ModelSpec(
        name=v.name(v.string(m, "name", "model"), "model", "model.name", m, "name"),
        source=v.string(m, "source", "model"),
        gguf_file=v.string(m, "gguf_file", "model", optional=True),
        revision=v.string(m, "revision", "model", optional=True),
        tokenizer=v.string(m, "tokenizer", "model", optional=True),
    )


def _parse_profile(v: Validator, pname: str, pnode: Mapping, kp: str, known_kinds: Sequence[str]) -> ProfileSpec:
    v.keys(pnode, _PROFILE_KEYS, kp, required=("device", "variants"))
    device = v.string(pnode, "device", kp)
    if not DEVICE_RE.match(device):
        v.err(f"{kp}.device", f"expected cpu, cuda or cuda:N, got {shown(device)}", pnode, "device")
    marker = v.choice(pnode, "marker", kp, MARKERS, "gpu" if device.startswith("cuda") else "smoke")
    entries_node = v.mapping(pnode["variants"], f"{kp}.variants", pnode, "variants")
    if not entries_node:
        v.err(f"{kp}.variants", "at least one variant is needed", pnode, "variants")
    entries: dict[str, EntrySpec] = {}
    for name, (vkey, enode) in v.named_mappings(entries_node, "variant", f"{kp}.variants").items():
        ekp = f"{kp}.variants.{vkey}"
        entries[name] = _parse_entry(v, name, enode, ekp, known_kinds, line_of(entries_node, vkey))
    return ProfileSpec(
        name=pname,
        marker=marker,
        device=device,
        seqlen=v.integer(pnode, "seqlen", kp, 2048, 2),
        batch_size=v.integer(pnode, "batch_size", kp, 1, 1),
        max_windows=v.integer(pnode, "max_windows", kp, None, 1),
        variants=entries,
        device_map=_device_map(v, pnode, kp),
    )


def _parse_entry(
    v: Validator, name: str, enode: Mapping, ekp: str, known_kinds: Sequence[str], line: int | None
) -> EntrySpec:
    v.keys(enode, _ENTRY_KEYS, ekp, required=("kind",))
    kind = v.string(enode, "kind", ekp)
    if kind not in known_kinds:
        v.err(f"{ekp}.kind", f"unknown variant kind {kind!r} (known: {', '.join(known_kinds)})", enode, "kind")
    params = enode.get("params")
    params = {} if params is None else v.mapping(params, f"{ekp}.params", enode, "params")
    tol = enode.get("tolerance")
    if not tol:
        v.err(
            f"{ekp}.tolerance",
            "missing tolerance: give at least one rule, e.g. [{type: absolute, max_delta: 0.01}]",
            enode,
        )
    if not isinstance(tol, list):
        v.err(f"{ekp}.tolerance", "expected a list of rules", enode, "tolerance")
    rules = [parse_rule(v, r, f"{ekp}.tolerance[{i}]", tol, i) for i, r in enumerate(tol)]
    fp = enode.get("fingerprint")
    if fp is not None:
        v.mapping(fp, f"{ekp}.fingerprint", enode, "fingerprint")
    return EntrySpec(
        name=name,
        kind=kind,
        params=resolve_param_paths(plain(params), v.path.parent),
        rules=rules,
        fingerprint=plain(fp) if fp is not None else None,
        recorded=_parse_recorded(v, enode.get("recorded"), f"{ekp}.recorded", enode, "reference" in enode),
        line=line,
        rule_lines=[line_of(tol, i) for i in range(len(tol))],
        reference=None if isinstance(enode.get("reference"), Mapping) else v.string(enode, "reference", ekp, True),
        reference_file=_reference_file(v, enode, ekp),
    )


def _reference_file(v: Validator, enode: Any, ekp: str) -> str | None:
    """``reference: {file: PATH}``: a stored reference (``pplgate reference save``), ``$VARS`` and ``~`` expanded,
    a relative path resolved against the baseline file's folder."""
    node = enode.get("reference")
    if not isinstance(node, Mapping):
        return None
    if set(node) != {"file"} or not isinstance(node.get("file"), str) or not node["file"]:
        v.err(
            f"{ekp}.reference",
            "a stored reference is `reference: {file: PATH}` (a file `pplgate reference save` wrote); an entry of the "
            "profile is `reference: <entry>`",
            enode,
            "reference",
        )
    return str(resolve_file(node["file"], v.path.parent))


def _parse_recorded(v: Validator, node: Any, keypath: str, parent: Any, reference: bool) -> Recorded | None:
    if node is None:
        return None
    node = v.mapping(node, keypath, parent, "recorded")
    with_kld = reference or any(k in node for k in RECORDED_KLD_KEYS)  # the KLD keys belong to a reference
    v.keys(
        node, _RECORDED_KEYS | (set(RECORDED_KLD_KEYS) if with_kld else set()), keypath, required=("ppl", "window_nlls")
    )
    ppl = real(node["ppl"])
    if ppl is None or not math.isfinite(ppl) or ppl < 1:
        v.err(
            f"{keypath}.ppl",
            f"expected a finite perplexity >= 1, got {shown(node['ppl'])}; {RERECORD}",
            node,
            "ppl",
        )
    nlls = node["window_nlls"]
    if not isinstance(nlls, list) or not nlls:
        v.err(f"{keypath}.window_nlls", f"expected a non-empty list of numbers; {RERECORD}", node, "window_nlls")
    values = [real(x) for x in nlls]
    for i, x in enumerate(values):
        if x is None or not math.isfinite(x) or x < 0:
            v.err(
                f"{keypath}.window_nlls[{i}]",
                f"expected a finite number >= 0 (a window's mean NLL in nats), got {shown(nlls[i])}; {RERECORD}",
                nlls,
                i,
            )
    prov = node.get("provenance")
    if prov is not None:
        v.mapping(prov, f"{keypath}.provenance", node, "provenance")
    return Recorded(
        ppl=ppl,
        window_nlls=values,
        provenance=plain(prov) if prov is not None else {},
        kld=parse_recorded_kld(v, node, keypath, RERECORD),
        layers=parse_layers(v, node, keypath, RERECORD),
        raw=plain(node),
    )


def _device_map(v: Validator, pnode: Mapping, kp: str) -> str | None:
    value = pnode.get("device_map")
    if value is not None and value not in DEVICE_MAPS:
        v.err(
            f"{kp}.device_map",
            f"must be one of {', '.join(DEVICE_MAPS)} or absent, got {shown(value)}",
            pnode,
            "device_map",
        )
    return value

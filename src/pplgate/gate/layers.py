"""Which modules' quantization error moved against the record: :func:`moved` compares two per-module
profiles (module name -> relative output error, as ``pplgate.protocol.layers`` measures them) and says,
in a few lines, where the model changed ("layers 12-14 mlp.down_proj: output error 0.031 -> 0.094").
A record keeps its profile as ``recorded: layers:`` (:func:`compact`, read back by :func:`parse_layers`); a
failure or a drift of the entry shows :func:`where_lines` under :data:`WHERE`."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
UP, DOWN, SAME = "up", "down", "same"
RECORD_ONLY, NOW_ONLY, UNMEASURED = "in the record, missing now", "new, not in the record", "not measured"
_MISSING = (RECORD_ONLY, NOW_ONLY, UNMEASURED)


@dataclass(frozen=True)
class _Item:
    first: int | None  # layer range (None: a name outside the decoder layers)
    last: int | None
    module: str  # e.g. "mlp.down_proj"; the whole name where there is no layer
    kind: str
    recorded: float
    measured: float
    score: float  # how far it moved: |log| of the ratio, floored

    def label(self) -> str:
        if self.first is None:
            return self.module
        layers = f"layer {self.first}" if self.first == self.last else f"layers {self.first}-{self.last}"
        return f"{layers} {self.module}"


def _num(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def _line(item: _Item) -> str:
    if item.kind in _MISSING:
        return f"{item.label()}: {item.kind}"
    n = 1 if item.first is None else item.last - item.first + 1  # type: ignore[operator]
    notes = [f"mean of {n} layers"] if n > 1 else []
    if 0 < item.recorded < math.inf and item.measured < math.inf:
        notes.append(f"x{item.measured / item.recorded:.3g}")
    tail = f" ({', '.join(notes)})" if notes else ""
    return f"{item.label()}: output error {_num(item.recorded)} -> {_num(item.measured)}{tail}"


def _classify(name: str, recorded: Mapping[str, float], measured: Mapping[str, float], rel: float, floor: float):
    m = _LAYER.match(name)
    layer, module = (int(m.group(1)), m.group(2)) if m else (None, name)
    r, q = recorded.get(name, math.nan), measured.get(name, math.nan)
    if name not in measured:
        kind = RECORD_ONLY
    elif name not in recorded:
        kind = NOW_ONLY
    elif math.isnan(r) or math.isnan(q):
        kind = UNMEASURED
    elif r == q or (math.inf not in (r, q) and abs(q - r) <= max(floor, rel * max(abs(r), abs(q)))):
        kind = SAME
    else:
        kind = UP if q > r else DOWN
    score = 0.0
    if kind in (UP, DOWN):
        score = math.inf if math.inf in (r, q) else abs(math.log((q + floor) / (r + floor)))
    return _Item(layer, layer, module, kind, r, q, score)


def _combine(items: list[_Item], first: int | None, last: int | None, module: str) -> _Item:
    n = len(items)
    return _Item(
        first,
        last,
        module,
        items[0].kind,
        sum(i.recorded for i in items) / n,
        sum(i.measured for i in items) / n,
        max(i.score for i in items),
    )


def _whole_layers(items: list[_Item]) -> list[_Item]:
    """A layer whose every module moved the same way (or is missing the same way) is one item."""
    by_layer: dict[int, list[_Item]] = {}
    for i in items:
        if i.first is not None:
            by_layer.setdefault(i.first, []).append(i)
    out = [i for i in items if i.first is None]
    for layer, group in by_layer.items():
        kinds = {i.kind for i in group}
        if len(group) > 1 and len(kinds) == 1 and SAME not in kinds:
            out.append(_combine(group, layer, layer, f"every module ({len(group)})"))
        else:
            out += group
    return out


def _ranges(items: list[_Item]) -> list[_Item]:
    """Consecutive layers of one module type that moved the same way: one item."""
    out = [i for i in items if i.first is None]
    runs: dict[tuple[str, str], list[_Item]] = {}
    for i in sorted((i for i in items if i.first is not None), key=lambda i: i.first):
        runs.setdefault((i.module, i.kind), []).append(i)
    for (module, _), group in runs.items():
        run = [group[0]]
        for i in group[1:] + [None]:
            if i is not None and i.first == run[-1].last + 1:  # type: ignore[operator]
                run.append(i)
                continue
            out.append(run[0] if len(run) == 1 else _combine(run, run[0].first, run[-1].last, module))
            if i is not None:
                run = [i]
    return out


def moved(
    recorded: Mapping[str, float],
    measured: Mapping[str, float],
    top: int = 3,
    *,
    rel: float = 0.1,
    floor: float = 1e-4,
) -> list[str]:
    """Lines naming the modules whose output error moved most from ``recorded`` to ``measured``, largest
    move first (the ratio, then the difference), at most ``top`` of them, then ``"and N more moved"``
    when there are more. A module moved when its error changed by more than ``rel`` of the larger value
    and more than ``floor`` (the 4 significant digits a record keeps, near 0). Consecutive layers of one
    module type that moved the same way are one line (``layers 12-14 mlp.down_proj``, mean errors), and
    so is a layer whose every module moved the same way (``layer 3 every module (7)``). A module missing
    from either side, or not measured (``nan``), is named after the moves, every one (merged the same way),
    never dropped. An empty list: nothing moved."""
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    items = [_classify(n, recorded, measured, rel, floor) for n in {**recorded, **measured}]
    items = _ranges([i for i in _whole_layers(items) if i.kind != SAME])
    moves = sorted(
        (i for i in items if i.kind in (UP, DOWN)),
        key=lambda i: (-i.score, -abs(_finite(i.measured) - _finite(i.recorded)), i.first or 0, i.module),
    )
    missing = sorted((i for i in items if i.kind in _MISSING), key=lambda i: (i.kind, i.first or 0, i.module))
    lines = [_line(i) for i in moves[:top]]
    if len(moves) > top:
        lines.append(f"and {len(moves) - top} more moved")
    return lines + [_line(i) for i in missing]


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 1e300


# --------------------------------------------------------------------------- the record's ``layers:`` block

LAYER_TOKENS = 128  # the fixed batch a profile is measured on: the first tokens of the canonical stream
WHERE = f"where it moved (per-module output error vs the reference, {LAYER_TOKENS} tokens):"
NO_PROFILE = "no recorded per-module profile: re-record (--update-baselines) to localise a change"
NOT_MEASURED = "no per-module profile measured in this run (see the record's provenance layers_unavailable)"


def compact(errors: Mapping[str, float]) -> dict[str, float | list[float | None] | None]:
    """The ``recorded: layers:`` form of a profile: per module type the list of its errors over the decoder
    layers (``null`` where a layer lacks it or it was not measured), a name outside the layers as its own key."""
    per_type: dict[str, dict[int, float]] = {}
    out: dict[str, float | list[float | None] | None] = {}
    for name, x in errors.items():
        m = _LAYER.match(name)
        if m:
            per_type.setdefault(m.group(2), {})[int(m.group(1))] = float(x)
    n = 1 + max((i for by in per_type.values() for i in by), default=-1)
    for module, by in per_type.items():
        out[module] = [None if math.isnan(by.get(i, math.nan)) else by[i] for i in range(n)]
    out.update({k: None if math.isnan(x) else float(x) for k, x in errors.items() if not _LAYER.match(k)})
    return out


def expand(layers: Mapping[str, Any]) -> dict[str, float]:
    """:func:`compact`'s inverse: module name -> error (``null`` values left out)."""
    out: dict[str, float] = {}
    for key, value in layers.items():
        if isinstance(value, list):
            out.update({f"layers.{i}.{key}": float(x) for i, x in enumerate(value) if x is not None})
        elif value is not None:
            out[key] = float(value)
    return out


def parse_layers(v: Any, node: Mapping, keypath: str, rerecord: str) -> dict[str, float] | None:
    """A ``recorded:`` block's optional ``layers:`` (``v``: a :class:`~pplgate.gate.validator.Validator`),
    expanded to module name -> error."""
    from pplgate.gate.validator import _type_name, real, shown

    if "layers" not in node:
        return None
    kp = f"{keypath}.layers"
    layers = node["layers"]
    if not isinstance(layers, Mapping):
        v.err(kp, f"expected a mapping of module names, got {_type_name(layers)}; {rerecord}", node, "layers")

    def check(x: Any, where: str, parent: Any, key: Any) -> None:
        f = real(x)
        if x is not None and (f is None or math.isnan(f) or f < 0):
            v.err(where, f"expected a relative output error >= 0 (or null), got {shown(x)}; {rerecord}", parent, key)

    for key, value in layers.items():
        if not isinstance(key, str):
            v.err(f"{kp}.{key}", f"expected a module name, got {shown(key)}; {rerecord}", layers, key)
        if isinstance(value, list):
            for i, x in enumerate(value):
                check(x, f"{kp}.{key}[{i}]", value, i)
        else:
            check(value, f"{kp}.{key}", layers, key)
    return expand(layers)


def from_json(layers: Any) -> dict[str, Any]:
    """A :func:`compact` profile read back from a JSON report (where ``inf`` is the string ``"inf"``);
    ValueError naming the first value that is not a number >= 0, ``null`` or ``"inf"``."""
    if not isinstance(layers, dict):
        raise ValueError("layers is not an object")

    def number(x: Any, where: str) -> float | None:
        if x == "inf":
            return math.inf
        if x is None or (isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0):
            return x
        raise ValueError(f"layers.{where} is {x!r}, not a number >= 0")

    return {
        k: [number(x, f"{k}[{i}]") for i, x in enumerate(v)] if isinstance(v, list) else number(v, k)
        for k, v in layers.items()
    }


def where_lines(entry: Any, measured: Mapping[str, Any] | None, top: int = 3) -> list[str] | None:
    """The lines under :data:`WHERE` for ``entry`` (an :class:`~pplgate.gate.spec.EntrySpec`; None where
    it names no reference entry or records nothing) and this run's :func:`compact` profile (None: none)."""
    recorded = entry.recorded
    if recorded is None or entry.reference is None:
        return None
    if recorded.layers is None:
        return [NO_PROFILE]
    if measured is None:
        return [NOT_MEASURED]
    return moved(recorded.layers, expand(measured), top) or ["no module's output error moved (by more than 10%)"]


def recorded_layers(entry: Any) -> dict[str, Any] | None:
    """``entry``'s recorded profile in :func:`compact` form, where :func:`where_lines` compares with it."""
    rec = entry.recorded
    return compact(rec.layers) if rec is not None and rec.layers and entry.reference is not None else None


def where_text(lines: list[str] | None) -> str:
    """The failure message's block (empty without lines)."""
    if not lines:
        return ""
    if lines == [NO_PROFILE]:
        return f"\n  {NO_PROFILE}"
    return f"\n  {WHERE}" + "".join(f"\n    {x}" for x in lines)

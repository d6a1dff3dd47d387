"""Which modules' quantization error moved against the record: :func:`moved` compares two per-module
profiles (module name -> relative output error, as ``pplgate.protocol.layers`` measures them) and says,
in a few lines, where the model changed ("layers 12-14 mlp.down_proj: output error 0.031 -> 0.094")."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

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

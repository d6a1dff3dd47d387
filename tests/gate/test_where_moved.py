"""The record's per-module profile (``recorded: layers:``): its compact form, its parsing, its travel in a
record and an update, and the "where it moved" block of a failure message."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from pplgate.errors import BaselineError
from pplgate.gate.layers import NO_PROFILE, NOT_MEASURED, WHERE, compact, expand, from_json, where_lines, where_text
from pplgate.gate.record import GateRecord, Status
from pplgate.gate.spec import Recorded, parse_baseline
from pplgate.gate.store import EntryUpdate, apply_updates

TYPES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
TYPES += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
PROFILE = {f"layers.{i}.{t}": round(0.01 + 0.001 * i + 0.0001 * j, 4) for i in range(30) for j, t in enumerate(TYPES)}

FILE = textwrap.dedent(
    """\
    schema_version: 1
    model:
      name: m
      source: some/hub-id
    profiles:
      cpu:
        device: cpu
        variants:
          fp32:
            kind: fp32
            tolerance:
              - {type: absolute, max_delta: 0.01}
          rtn:
            kind: rtn
            reference: fp32
            tolerance:
              - {type: absolute, max_delta: 0.01}
    """
)


def test_compact_is_one_list_per_module_type_and_expand_inverts_it():
    errors = {**PROFILE, "layers.3.mlp.up_proj": math.inf, "layers.4.mlp.up_proj": math.nan, "lm_head": 0.02}
    c = compact(errors)
    assert list(c) == [*TYPES, "lm_head"] and len(c["mlp.up_proj"]) == 30
    assert c["mlp.up_proj"][3] == math.inf and c["mlp.up_proj"][4] is None and c["lm_head"] == 0.02
    assert expand(c) == {k: v for k, v in errors.items() if not math.isnan(v)}  # not measured: left out
    assert compact({"layers.1.a": 0.5}) == {"a": [None, 0.5]}  # a layer without the module: null


def test_a_profile_read_back_from_a_json_report_gets_its_inf_back():
    import json

    c = compact({**PROFILE, "layers.3.mlp.up_proj": math.inf, "lm_head": math.inf})
    from pplgate.gate.reports.files import _json_safe

    assert from_json(json.loads(json.dumps(_json_safe(c)))) == c
    with pytest.raises(ValueError, match=r"layers\.lm_head is True, not a number >= 0"):
        from_json({"lm_head": True})


def _recorded(tmp_path: Path, layers: str | None) -> Path:
    block = "        recorded:\n          ppl: 7.0\n          window_nlls: [2.0]\n"
    if layers is not None:
        block += f"          layers: {layers}\n"
    p = tmp_path / "m.yaml"
    p.write_text(FILE.replace("        reference: fp32\n", "        reference: fp32\n" + block))
    return p


def test_an_update_writes_the_profile_and_the_file_parses_it_back(tmp_path):
    p = _recorded(tmp_path, None)
    before = p.read_text()
    assert parse_baseline(p, known_kinds=["fp32", "rtn"]).profiles["cpu"].variants["rtn"].recorded.layers is None
    upd = EntryUpdate("cpu", "rtn", {"seqlen": 128}, 7.5, [2.01], {"date": "today"}, layers=compact(PROFILE))
    text, _ = apply_updates(p, before, [upd])
    block = text.split("      layers:\n")[1].split("          provenance:")[0]
    assert block.startswith("            self_attn.q_proj: [0.01, 0.011")
    assert len(block.splitlines()) <= 7 * 4  # 30 layers x 7 module types: a few wrapped lines per type
    p.write_text(text)
    assert parse_baseline(p, known_kinds=["fp32", "rtn"]).profiles["cpu"].variants["rtn"].recorded.layers == PROFILE
    assert EntryUpdate.from_dict(upd.to_dict()) == upd
    assert "layers" not in EntryUpdate("p", "v", {}, 2, [1], {}).to_dict()


@pytest.mark.parametrize(
    ("layers", "keypath", "msg"),
    [
        ("[0.1]", "recorded.layers", "expected a mapping of module names, got list"),
        ("{mlp.down_proj: [0.1, -1]}", "recorded.layers.mlp.down_proj[1]", "expected a relative output error >= 0"),
        ("{mlp.down_proj: [0.1, x]}", "recorded.layers.mlp.down_proj[1]", "got 'x'"),
        ("{lm_head: .nan}", "recorded.layers.lm_head", "expected a relative output error >= 0 (or null), got nan"),
        ("{1: 0.2}", "recorded.layers.1", "expected a module name, got 1"),
    ],
)
def test_a_malformed_profile_is_an_error_naming_its_key(tmp_path, layers, keypath, msg):
    with pytest.raises(BaselineError) as ei:
        parse_baseline(_recorded(tmp_path, layers), known_kinds=["fp32", "rtn"])
    assert f"profiles.cpu.variants.rtn.{keypath}: " in str(ei.value) and msg in str(ei.value)
    assert "--update-baselines" in str(ei.value)  # how to fix it: re-record


class _Entry:
    def __init__(self, recorded: Recorded | None, reference: str | None = "fp32") -> None:
        self.recorded, self.reference = recorded, reference


def test_where_lines_name_the_moved_module_or_say_why_there_are_none():
    rec = Recorded(ppl=7.0, window_nlls=[2.0], layers=PROFILE)
    now = compact({**PROFILE, "layers.12.mlp.down_proj": 0.094})
    lines = where_lines(_Entry(rec), now)
    assert lines == ["layer 12 mlp.down_proj: output error 0.0226 -> 0.094 (x4.16)"]
    assert where_text(lines) == f"\n  {WHERE}\n    {lines[0]}"
    assert where_lines(_Entry(rec), compact(PROFILE)) == ["no module's output error moved (by more than 10%)"]
    assert where_lines(_Entry(rec), None) == [NOT_MEASURED]
    old = Recorded(ppl=7.0, window_nlls=[2.0])
    assert where_lines(_Entry(old), now) == [NO_PROFILE] and where_text([NO_PROFILE]) == f"\n  {NO_PROFILE}"
    assert where_lines(_Entry(None), now) is None and where_lines(_Entry(rec, reference=None), now) is None
    assert where_text(None) == ""


def test_a_record_carries_its_profile_and_where_it_moved_only_when_failing():
    then = compact(PROFILE)
    rec = GateRecord(nodeid="n", status=Status.FAIL, ppl=7.0, layers=then, moved=["layer 1 x: moved"])
    rec.baseline_layers = then
    d = rec.to_dict()
    assert d["layers"] == then and d["moved"] == ["layer 1 x: moved"] and d["baseline_layers"] == then
    assert GateRecord.from_dict(d) == rec
    rec.status = Status.PASS
    assert "moved" not in rec.to_dict() and "baseline_layers" not in rec.to_dict() and "layers" in rec.to_dict()

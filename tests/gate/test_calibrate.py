"""Tolerances from measured spread (pplgate.gate.calibrate) and writing them (pplgate.gate.tolerance_update)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pplgate.errors import BaselineError
from pplgate.gate import calibrate as cal
from pplgate.gate.rules import AbsoluteRule, KldRule, RelationalRule, RelativeRule, SpeedRule, Top1Rule
from pplgate.gate.store import plain, read_raw
from pplgate.gate.tolerance_update import ToleranceEdit, apply_edits, write_edits


def runs(entry: str, metric: str, values: list[float], **others: list[float]) -> list[dict]:
    """N runs of ``entry``'s ``metric`` (and of other entries' same metric, by name)."""
    out = []
    for i, v in enumerate(values):
        run = {entry: {metric: v}}
        for name, vals in others.items():
            run[name] = {metric: vals[i]}
        out.append(run)
    return out


def test_spread_and_margin():
    s = cal.Spread.of([10.0, 10.002, 10.001])
    assert (s.n, s.low, s.high) == (3, 10.0, 10.002)
    assert s.range == pytest.approx(0.002) and s.sd == pytest.approx(0.001)
    assert s.margin() == pytest.approx(max(3 * 0.002, 6 * 0.001))
    with pytest.raises(ValueError, match="at least 2"):
        cal.Spread.of([1.0])


def test_width_from_spread_flags_a_tolerance_below_it():
    p = cal.propose(AbsoluteRule(max_delta=0.001), "e", 0, runs("e", "ppl", [10.0, 10.003, 10.001]), recorded=10.001)
    assert p.key == "max_delta" and p.current == 0.001
    assert p.proposed == pytest.approx(0.0092)  # 6 x sd 0.00153 = 0.00917 (> 3 x range 0.009), rounded up
    assert p.proposed >= 3 * p.spread.range and p.proposed >= 6 * p.spread.sd - 1e-12
    assert p.verdict == cal.FLAKY and not p.deterministic
    assert p.reason() == "max(3 x range, 6 x sd) -> max_delta 0.0092"
    assert p.note() == "ppl over 3 runs: 10..10.003, range 0.003, sd 0.00153"


def test_width_covers_the_distance_from_the_record():
    """Runs that agree with each other but not with the recorded value (another machine's): the proposal
    still passes them."""
    p = cal.propose(AbsoluteRule(max_delta=0.0001), "e", 0, runs("e", "ppl", [10.01, 10.01]), recorded=10.0)
    assert p.deterministic and p.offset == pytest.approx(0.01)
    assert p.proposed == pytest.approx(0.01) and p.verdict == cal.FLAKY
    assert p.reason() == "runs up to 0.01 from the recorded value -> max_delta 0.01"


def test_deterministic_entry_gets_the_rounding_floor():
    ppl = cal.propose(AbsoluteRule(max_delta=0.001), "e", 0, runs("e", "ppl", [24.967004] * 3), recorded=24.967004)
    assert ppl.deterministic and ppl.proposed == 1e-6 == cal.floor_of("ppl")
    assert ppl.verdict == cal.LOOSE and ppl.note() == "deterministic over 3 runs (ppl 24.967004)"
    assert ppl.reason() == "the storage rounding -> max_delta 0.000001"
    kld = cal.propose(KldRule(max_delta=0.0001), "e", 1, runs("e", "kld", [0.3147195] * 2), recorded=0.3147195)
    assert kld.proposed == pytest.approx(1e-7)  # 7 significant digits of 0.31...
    top1 = cal.propose(Top1Rule(max_delta=0.001), "e", 2, runs("e", "top1", [0.686615] * 2), recorded=0.686615)
    assert top1.proposed == 1e-6
    assert cal.floor_of("kld", [2.5e-5]) == pytest.approx(1e-11)


def test_relative_width_is_a_fraction():
    p = cal.propose(RelativeRule(max_rel=0.01), "e", 0, runs("e", "ppl", [20.0, 20.02]), recorded=20.0)
    assert p.key == "max_rel" and p.quantity == "ppl"
    assert p.proposed == pytest.approx(0.0043)  # 6 x sd 0.000707 (> 3 x range 0.1% = 0.003), rounded up
    assert p.proposed == pytest.approx(cal.round_up(max(3 * 0.001, 6 * p.spread.sd)))


def test_limit_keeps_its_bound_with_headroom():
    r = runs("gptq", "ppl", [24.48, 24.49, 24.48], rtn=[24.97, 24.97, 24.97])
    p = cal.propose(RelationalRule(ref="rtn", max_delta=0.0), "gptq", 1, r)
    assert p.quantity == "ppl - ppl[rtn]" and p.values[0] == pytest.approx(-0.49)
    assert p.proposed == 0.0 and not p.changed and p.verdict.startswith("ok (headroom")
    assert p.reason() == "bound kept: ok (headroom 0.48)" == f"bound kept: {p.verdict}"  # the worst run: -0.48


def test_limit_without_headroom_is_loosened():
    r = runs("a", "ppl", [25.0, 25.02], rtn=[25.0, 25.0])
    p = cal.propose(RelationalRule(ref="rtn", max_delta=0.0), "a", 0, r)
    assert p.verdict == cal.FLAKY
    assert p.proposed == pytest.approx(0.02 + p.spread.margin(), abs=1e-6) and p.proposed > 0.02


def test_speed_rule_ratio_and_lower_bound():
    r = runs("q", "tokens_per_s", [90.0, 80.0, 85.0], fp32=[100.0, 100.0, 100.0])
    p = cal.propose(SpeedRule(ref="fp32", min_ratio=0.85), "q", 0, r)
    assert p.key == "min_ratio" and p.quantity == "tok/s / tok/s[fp32]"
    assert p.values == pytest.approx((0.9, 0.8, 0.85))
    assert p.verdict == cal.FLAKY  # a run at 0.80 < 0.85
    assert p.proposed <= 0.8 - p.spread.margin() + 1e-4 and p.proposed == round(p.proposed, 4)


def test_top1_against_another_entry_counts_lower_as_worse():
    r = runs("a", "top1", [0.70, 0.70], rtn=[0.69, 0.69])
    p = cal.propose(Top1Rule(ref="rtn", max_delta=0.0, direction="worse"), "a", 0, r)
    assert p.quantity == "top1[rtn] - top1" and p.values == pytest.approx((-0.01, -0.01))
    assert p.proposed == 0.0 and p.deterministic


def test_round_up_and_format():
    assert cal.round_up(0.0061) == pytest.approx(0.0061) and cal.round_up(0.00612) == pytest.approx(0.0062)
    assert cal.format_number(1e-6) == "0.000001" and cal.format_number(0.0062) == "0.0062"
    assert cal.format_number(0.0) == "0.0" and cal.format_number(2.0) == "2.0"
    assert float(cal.format_number(1.23e-7)) == 1.23e-7
    with pytest.raises(ValueError, match="unknown metric"):
        cal.floor_of("latency")


FILE = """\
# a comment that stays
schema_version: 1
model: {name: m, source: m}
profiles:
  cpu:
    marker: smoke
    device: cpu
    seqlen: 16
    batch_size: 1
    max_windows: 2
    variants:
      fp32:
        kind: fp32
        tolerance:
          # why 0.001
          - {type: absolute, max_delta: 0.001}   # trailing words
      q:
        kind: rtn
        tolerance:
          - type: absolute
            max_delta: 0.005
          - {type: relational, ref: fp32, max_rel: 0.26}
"""


def edit(entry: str, index: int, key: str, text: str) -> ToleranceEdit:
    return ToleranceEdit(("profiles", "cpu", "variants", entry), index, key, text, "spread 0 over 3 runs")


def test_edits_change_the_bounds_and_add_comments_only(tmp_path: Path):
    path = tmp_path / "b.yaml"
    new = apply_edits(path, FILE, [edit("fp32", 0, "max_delta", "0.000001"), edit("q", 0, "max_delta", "0.0002")])
    note = "          # calibrated spread 0 over 3 runs\n"
    expected = FILE.replace(
        "          - {type: absolute, max_delta: 0.001}", note + "          - {type: absolute, max_delta: 0.000001}"
    ).replace(
        "          - type: absolute\n            max_delta: 0.005",
        note + "          - type: absolute\n            max_delta: 0.0002",
    )
    assert new == expected
    # a second calibration replaces its comment instead of stacking another
    again = apply_edits(path, new, [edit("fp32", 0, "max_delta", "0.00001")])
    assert again.count("# calibrated") == 2 and "max_delta: 0.00001}" in again
    crlf = apply_edits(path, FILE.replace("\n", "\r\n"), [edit("q", 1, "max_rel", "0.3")])
    assert crlf == FILE.replace("max_rel: 0.26", "max_rel: 0.3").replace(
        "          - {type: relational", "          # calibrated spread 0 over 3 runs\n          - {type: relational"
    ).replace("\n", "\r\n")


def test_write_refuses_a_file_changed_since_it_was_read(tmp_path: Path):
    path = tmp_path / "b.yaml"
    path.write_text(FILE)
    with pytest.raises(BaselineError, match="changed since pplgate calibrate read it"):
        write_edits(path, FILE.replace("why 0.001", "why"), [edit("fp32", 0, "max_delta", "0.000001")])
    assert path.read_text() == FILE
    write_edits(path, FILE, [edit("fp32", 0, "max_delta", "0.000001")])
    assert plain(read_raw(path))["profiles"]["cpu"]["variants"]["fp32"]["tolerance"][0]["max_delta"] == 1e-6
    with pytest.raises(BaselineError, match="not in the file"):
        apply_edits(path, FILE, [edit("fp32", 3, "max_delta", "0.1")])

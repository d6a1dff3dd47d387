"""A tolerance looser than 10x its detectable shift, or tighter than its calibrated spread, warns at collection."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

FILE = """\
schema_version: 1
model: {name: m, source: org/not-downloaded}   # a hub id: collection does not load it
profiles:
  cpu:
    device: cpu
    variants:
      fp32:
        kind: fp32
        tolerance:
          # calibrated 2026-12-07, cpu: ppl over 5 runs: 23.32..23.34, range 0.02, sd 0.008; 6 x sd -> max_delta 0.05
          - {type: absolute, max_delta: 0.001}
        recorded: {ppl: 23.336065, window_nlls: [3.0, 3.1, 3.2, 3.3]}
      rtn:
        kind: rtn
        params: {w_bit: 4, q_group_size: 64, zero_point: true}
        reference: fp32
        tolerance: [{type: absolute, max_delta: %s}]
        recorded: {ppl: 26.642295, window_nlls: [3.1, 3.25, 3.28, 3.5]}
"""


@pytest.mark.parametrize("width, warned", [(100, True), (0.5, False)])
def test_a_too_loose_tolerance_warns_at_collection(pytester: pytest.Pytester, width: float, warned: bool):
    pytester.makeini("[pytest]\n")
    (pytester.path / "baselines").mkdir()
    (pytester.path / "baselines" / "m.yaml").write_text(FILE % width)
    res = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "baselines")
    out = res.stdout.str()
    assert res.ret == 0 and "2 tests collected" in out
    # rtn - fp32 per window: 0.1, 0.15, 0.08, 0.2 (sd 0.05377): 4.16 * sd / 2 = 0.11185 nats, 3.153 PPL
    loose = (
        "PytestWarning: pplgate: m.yaml: profiles.cpu.variants.rtn: tolerance ±100 is 31.7x the detectable PPL "
        "shift (3.15 over 4 windows, s from the recorded dNLL/KLD vs fp32): the gate cannot see a change smaller "
        "than 100; tighten it to <= 31.5 (10x the detectable shift)"
    )
    assert (loose in out) is warned, textwrap.shorten(out, 3000)
    res.stdout.fnmatch_lines(
        ["*profiles.cpu.variants.fp32: tolerance ±0.001 is tighter than the measured spread (range 0.02 over 5 runs*"]
    )

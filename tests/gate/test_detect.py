"""The detectable shift (pplgate.gate.detect): the numbers by hand, the record, the message, the table, the warnings."""

from __future__ import annotations

import json
import math

import pytest

from pplgate.gate import detect
from pplgate.gate.kld import KldMeasured, RecordedKld
from pplgate.gate.kld_rules import KldRule
from pplgate.gate.record import GateRecord, Status
from pplgate.gate.reports import markdown, terminal_table
from pplgate.gate.rules import AbsoluteRule, RelationalRule
from pplgate.gate.spec import EntrySpec, Recorded
from pplgate.gate.stats import detectable_shift, t_quantile_80, t_quantile_975
from pplgate.gate.verdict import Measured, Target, judge, values_of

TARGET = Target("b.yaml::m[cpu-rtn]", "m[cpu-rtn]", "b.yaml", "m", "dir", "cpu", "cpu", 128)
FP32 = [3.0, 3.1, 3.2, 3.3]
RTN = [3.1, 3.25, 3.28, 3.5]  # dNLL vs fp32: 0.1, 0.15, 0.08, 0.2
FP = {"n_windows": 4, "variant": {"kind": "rtn"}}
ABS = AbsoluteRule(max_delta=0.005)


def _ppl(nlls):
    return math.exp(math.fsum(nlls) / len(nlls))


def _sd(xs):
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _entry(name="rtn", nlls=RTN, rules=(ABS,), reference="fp32", klds=None):
    kld = RecordedKld(sum(klds) / len(klds), 0.9, list(klds), [0.9] * len(klds)) if klds else None
    rec = Recorded(ppl=_ppl(nlls), window_nlls=list(nlls), kld=kld)
    return EntrySpec(name, "rtn", {}, list(rules), dict(FP), rec, reference=reference)


def _measured(nlls, klds=None):
    kld = KldMeasured("fp32", sum(klds) / len(klds), 0.9, klds, [0.9] * len(klds)) if klds else None
    return Measured(_ppl(nlls), nlls, len(nlls), 32, dict(FP), "quantized", 1.0, 0.5, kld=kld)


def test_t_quantiles_and_the_shift_by_hand():
    assert t_quantile_80(7) == 0.896 and t_quantile_975(7) == 2.365  # the tables (df 7)
    assert t_quantile_80(200) == pytest.approx(0.8434, abs=1e-4)  # the expansion (scipy: 0.84335)
    # s = 0.1 over n = 8 windows: (2.365 + 0.896) * 0.1 / sqrt(8) = 0.115294
    assert detectable_shift(0.1, 8) == pytest.approx(0.3261 / math.sqrt(8), rel=1e-12)
    assert round(detectable_shift(0.1, 8), 6) == 0.115294
    assert detectable_shift(0.1, 1) is None  # no t interval


def test_t_quantile_80_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    assert max(abs(t_quantile_80(df) - stats.t.ppf(0.8, df)) for df in range(1, 400)) < 6e-4  # 3-decimal table


def test_a_quantized_entry_uses_its_reference_and_a_reference_entry_the_rounding():
    fp32 = _entry("fp32", FP32, reference=None)
    rtn = _entry(klds=[0.2, 0.3, 0.25, 0.35], rules=[AbsoluteRule(max_delta=0.005), KldRule(max_delta=0.01)])
    d = detect.of_recorded(rtn, {"fp32": fp32, "rtn": rtn})
    s = _sd([0.1, 0.15, 0.08, 0.2])
    delta = (3.182 + 0.978) * s / 2
    assert d.sd == pytest.approx(s) and d.ppl == pytest.approx(_ppl(RTN) * math.expm1(delta))
    assert d.kld == pytest.approx((3.182 + 0.978) * _sd([0.2, 0.3, 0.25, 0.35]) / 2)
    assert d.tolerance == "±0.005" and d.ratio == pytest.approx(0.005 / d.ppl)
    assert d.kld_tolerance == "kld±0.01" and d.basis == "the per-window dNLL vs fp32"
    ref = detect.of_recorded(fp32, {"fp32": fp32, "rtn": rtn})
    assert ref.sd == detect.ROUNDING_SD and ref.kld is None
    one = detect.shift(fp32, [3.0], None, 20.0)
    assert one.ppl is None and one.describe().startswith("detectable shift n/a (1 window)") and one.cell() == "n/a"


def test_a_relational_ref_counts_as_the_reference():
    e = _entry(rules=[AbsoluteRule(max_delta=0.5), RelationalRule(ref="fp32", max_rel=0.3)], reference=None)
    assert detect.of_recorded(e, {"fp32": _entry("fp32", FP32, reference=None)}).basis == "the per-window dNLL vs fp32"


def test_judge_fills_the_record_and_the_failure_message_shows_it():
    klds = [0.2, 0.3, 0.25, 0.35]
    rtn = _entry(klds=klds, rules=[AbsoluteRule(max_delta=0.005), KldRule(max_delta=0.01)])
    now = [x + 0.01 for x in RTN]  # +0.01 nats per window: fails ±0.005
    others = values_of({"fp32": _measured(FP32)})
    rec = judge(TARGET, rtn, _measured(now, klds), others=others)
    assert rec.status is Status.FAIL and rec.detectable is not None
    assert rec.detectable.basis == "the per-window dNLL vs fp32"  # this run's rtn - this run's fp32
    assert rec.detectable.sd == pytest.approx(_sd([0.11, 0.16, 0.09, 0.21]))
    again = GateRecord.from_dict(json.loads(json.dumps(rec.to_dict())))  # xdist worker -> controller, JSON
    assert again == rec and again.detectable == rec.detectable
    d = rec.detectable
    line = (
        f"  detects a PPL shift of >= {d.ppl:.3g} ({d.rel * 100:.3g}%) and a KLD shift of >= {d.kld:.3g} at 95% "
        f"confidence (80% power) over 4 windows (s = {d.sd:.3g} nats/window: the per-window dNLL vs fp32); "
        f"tolerance ±0.005 is {0.005 / d.ppl:.2g}x that: it also fails on shifts the windows cannot tell from "
        "per-window variation; tolerance kld±0.01"
    )
    assert line in rec.message
    # a reference entry: this run's paired differences vs its record, once they are not all zero
    fp32 = _entry("fp32", FP32, reference=None)
    moved = judge(TARGET, fp32, _measured([3.0, 3.1, 3.2, 3.31]), others=values_of({}))
    assert (
        moved.detectable.basis == "this run's per-window dNLL vs its record"
        and moved.detectable.sd == pytest.approx(0.005)
    )
    same = judge(TARGET, fp32, _measured(FP32), others=values_of({}))
    assert same.status is Status.PASS and same.detectable.sd == detect.ROUNDING_SD


def test_the_table_and_the_markdown_show_it():
    rtn = _entry()
    rec = judge(TARGET, rtn, _measured([x + 0.01 for x in RTN]), others=values_of({"fp32": _measured(FP32)}))
    table = terminal_table([rec])
    header = table[0].split()
    assert header[header.index("tolerance") + 1] == "detects"
    assert f">={rec.detectable.ppl:.2g}" in table[2]
    md = markdown([rec])
    assert f"| ±0.005 | >={rec.detectable.ppl:.2g} | ❌ FAIL |" in md
    assert f"- {rec.detectable.describe()}" in md
    assert GateRecord(nodeid="x", status=Status.SKIPPED).to_dict().get("detectable") is None


def test_warnings_for_a_loose_tolerance_and_one_tighter_than_the_calibrated_spread():
    fp32 = _entry("fp32", FP32, reference=None)
    entries = {"fp32": fp32, "rtn": _entry(rules=[AbsoluteRule(max_delta=100.0)])}
    d = detect.of_recorded(entries["rtn"], entries)
    (loose,) = detect.tolerance_warnings(entries["rtn"], entries)
    assert loose.startswith(f"tolerance ±100 is {100 / d.ppl:.3g}x the detectable PPL shift ({d.ppl:.3g} over 4")
    assert f"cannot see a change smaller than 100; tighten it to <= {10 * d.ppl:.3g}" in loose
    assert detect.tolerance_warnings(_entry(rules=[AbsoluteRule(max_delta=0.5)]), entries) == []
    assert detect.tolerance_warnings(fp32, entries) == []  # a reference entry: its shift depends on the run
    lines = [
        "tolerance:",
        "  # calibrated 2026-12-07, cpu: ppl over 5 runs: 24.50..24.52, range 0.02, sd 0.008; 6 x sd -> max_delta 0.05",
        "  - {type: absolute, max_delta: 0.001}",
        "  # calibrated 2026-12-07, cpu: deterministic over 3 runs (ppl 24.5); the storage rounding -> max_delta 1e-06",
        "  - {type: absolute, max_delta: 0.001}",
    ]
    assert detect.calibrated_spreads(lines, [3, 5, None]) == {0: (0.02, 5), 1: (0.0, 3)}
    tight = _entry("fp32", FP32, rules=[AbsoluteRule(max_delta=0.001)] * 2, reference=None)
    (flaky,) = detect.tolerance_warnings(tight, {"fp32": tight}, {0: (0.02, 5), 1: (0.0, 3)})
    assert flaky.startswith("tolerance ±0.001 is tighter than the measured spread (range 0.02 over 5 runs")

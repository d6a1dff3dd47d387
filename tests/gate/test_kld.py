"""Entries with a ``reference:``: the kld/top1 rules, the schema's checks, the recorded KLD block and its update."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pplgate.errors import BaselineError
from pplgate.gate.kld import KldMeasured, record_block, recorded_block
from pplgate.gate.rules import KldRule, Top1Rule
from pplgate.gate.spec import parse_baseline
from pplgate.gate.store import EntryUpdate, apply_updates
from pplgate.gate.verdict import Measured, Target, judge, recorded_problems

KINDS = ("fp32", "rtn", "awq")

DOC = textwrap.dedent(
    """\
    # comment kept
    schema_version: 1
    model: {name: m, source: some/hub-id}
    profiles:
      cpu:
        device: cpu
        seqlen: 128
        variants:
          fp32:
            kind: fp32
            tolerance: [{type: absolute, max_delta: 0.01}]
          rtn:
            kind: rtn
            reference: fp32   # compared with fp32
            tolerance:
              - {type: kld, max_delta: 0.001}
              - {type: top1, min_agreement: 0.8}
          awq:
            kind: awq
            reference: fp32
            tolerance:
              - {type: kld, ref: rtn, max_delta: 0.0}   # AWQ's mean KLD <= RTN's
              - {type: top1, ref: rtn, max_delta: 0.0}
              - {type: kld, max_mean: 0.5}
    """
)


def parse(tmp_path: Path, text: str = DOC):
    p = tmp_path / "m.yaml"
    p.write_text(text)
    return parse_baseline(p, known_kinds=KINDS)


def test_parse_references_and_rules(tmp_path):
    entries = parse(tmp_path).profiles["cpu"].variants
    assert entries["fp32"].reference is None and entries["rtn"].reference == "fp32"
    assert entries["awq"].refs == ["rtn", "rtn", "fp32"]
    kld, top1 = entries["rtn"].rules
    assert isinstance(kld, KldRule) and kld.max_delta == 0.001 and kld.direction == "both" and kld.needs_recorded
    assert isinstance(top1, Top1Rule) and top1.bound == 0.8 and not top1.needs_recorded
    rel = entries["awq"].rules[0]
    assert rel.ref == "rtn" and rel.direction == "worse" and not rel.needs_recorded
    assert entries["awq"].tolerance_text() == "kld:rtn+0, top1:rtn+0, kld≤0.5"


@pytest.mark.parametrize(
    ("old", "new", "keypath", "message"),
    [
        ("reference: fp32   # compared", "reference: nope   #", "variants.rtn.reference", "reference 'nope' is not an"),
        ("reference: fp32   # compared", "reference: rtn   #", "variants.rtn.reference", "cannot be its own reference"),
        ("kind: fp32\n", "kind: fp32\n        reference: awq\n", "tolerance", "form a cycle"),
        ("\n        reference: fp32   # compared with fp32", "", "rtn.tolerance[0]", "add `reference: <entry>`"),
        ("{type: kld, max_delta: 0.001}", "{type: kld, max_delta: 0.1, max_mean: 1}", "tolerance[0]", "exactly one of"),
        ("{type: kld, max_delta: 0.001}", "{type: kld, max_mean: 1, ref: fp32}", "tolerance[0]", "takes no ref"),
        ("min_agreement: 0.8", "min_agreement: 1.5", "min_agreement", "a fraction in [0, 1]"),
        ("{type: kld, max_delta: 0.001}", "{type: kld, max_mean: -1}", "max_mean", "non-negative"),
    ],
)
def test_bad_references_and_rules_are_clear_errors(tmp_path, old, new, keypath, message):
    assert old in DOC
    with pytest.raises(BaselineError) as ei:
        parse(tmp_path, DOC.replace(old, new, 1))
    assert message in str(ei.value) and keypath in ei.value.keypath


def test_a_kld_ref_must_share_the_reference(tmp_path):
    text = DOC.replace("reference: fp32\n", "reference: rtn\n")  # awq's
    with pytest.raises(BaselineError, match="compared with reference 'fp32', this entry with 'rtn'"):
        parse(tmp_path, text)


def test_reference_with_device_map_is_refused(tmp_path):
    with pytest.raises(BaselineError, match="device_map"):
        parse(tmp_path, DOC.replace("seqlen: 128", "seqlen: 128\n    device_map: auto"))


@pytest.mark.parametrize("ref", ["fp32", "rtn"])  # a reference, an entry with one
def test_a_speed_rule_between_a_pass_and_an_entry_alone_is_refused(tmp_path, ref):
    """In the pass an entry's tokens/s is its own forwards; alone, its whole evaluation: not comparable."""
    plain = f"      plain:\n        kind: rtn\n        tolerance: [{{type: speed, ref: {ref}, min_ratio: 0.5}}]\n"
    with pytest.raises(BaselineError, match="a speed rule compares two entries timed the same way") as ei:
        parse(tmp_path, DOC + plain)
    assert ei.value.keypath.endswith("variants.plain.tolerance[0]")
    assert f"plain is scored alone and {ref} the pass of reference fp32" in str(ei.value)


@pytest.mark.parametrize(("entry", "ref"), [("awq", "fp32"), ("awq", "rtn"), ("rtn", "fp32")])
def test_a_speed_rule_within_one_pass_is_accepted(tmp_path, entry, ref):
    """Each model of the pass is timed on its own forwards: a ratio between two of them means something."""
    anchor = {"rtn": "- {type: top1, min_agreement: 0.8}", "awq": "- {type: kld, max_mean: 0.5}"}[entry]
    rule = f"{anchor}\n          - {{type: speed, ref: {ref}, min_ratio: 0.5}}"
    spec = parse(tmp_path, DOC.replace(anchor, rule))
    assert [r.metric for r in spec.profiles["cpu"].variants[entry].rules][-1] == "tokens_per_s"


def test_a_tests_entry_takes_no_kld_rule(tmp_path):
    text = "schema_version: 1\ntests:\n  t:\n    tolerance: [{type: kld, max_mean: 0.1}]\n"
    with pytest.raises(BaselineError, match="compares with an entry's reference: only entries of profiles") as ei:
        parse(tmp_path, text)
    assert ei.value.keypath == "tests.t.tolerance[0]"


@pytest.mark.parametrize(
    ("rule", "value", "recorded", "session", "passed", "text"),
    [
        (KldRule(bound=0.1), 0.05, None, {}, True, "[PASS] kld: mean KLD <= 0.1: got 0.050000"),
        (Top1Rule(bound=0.9), 0.85, None, {}, False, "[FAIL] top1: agreement >= 0.9: got 0.850000"),
        (KldRule(max_delta=0.01), 0.115, 0.1, {}, False, "[FAIL] kld: |mean KLD - recorded| <= 0.01: got +0.015"),
        (KldRule(max_rel=0.1, direction="worse"), 0.05, 0.1, {}, True, "(only worse counts): got -50.0000%"),
        (Top1Rule(max_delta=0.01, direction="worse"), 0.95, 0.9, {}, True, "recorded - agreement <= 0.01"),
        (Top1Rule(max_delta=0.01, direction="worse"), 0.85, 0.9, {}, False, "got +0.05"),
        (KldRule(ref="rtn", max_delta=0.0, direction="worse"), 0.2, None, {"rtn": 0.3}, True, "rtn measured 0.3"),
        (KldRule(ref="rtn", max_delta=0.0, direction="worse"), 0.2, None, {}, False, "no kld[rtn] value"),
        (KldRule(max_delta=0.01), None, 0.1, {}, False, "no comparison with the reference measured"),
    ],
)
def test_rule_checks(rule, value, recorded, session, passed, text):
    res = rule.check(value, recorded, session)
    assert res.passed is passed and text in res.text


def _measured(klds, top1, fp) -> Measured:
    return Measured(
        ppl=30.0,
        window_nlls=[3.4011973816621555] * len(klds),
        n_windows=len(klds),
        n_windows_total=10,
        fingerprint=fp,
        origin="quantized",
        wall_time_s=1.0,
        prepare_time_s=1.0,
        kld=KldMeasured("fp32", sum(klds) / len(klds), sum(top1) / len(top1), klds, top1),
    )


def test_update_writes_the_vectors_and_judging_reads_them_back(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(DOC)
    entry = parse(tmp_path).profiles["cpu"].variants["rtn"]
    fp = {"seqlen": 128, "reference": {"entry": "fp32", "variant": {"kind": "fp32"}, "dtype": "float32"}}
    m = _measured([0.1, 0.3], [0.9, 0.8], fp)
    target = Target("n", "m[cpu-rtn]", str(path), "m", "some/hub-id", "cpu", "cpu", 128)
    rec = judge(target, entry, m, update=True, provenance={"date": "x"})
    assert rec.status == "created" and rec.update.kld == recorded_block(m.kld)
    text, _ = apply_updates(path, DOC, [rec.update])
    assert "# comment kept" in text and "reference: fp32   # compared with fp32" in text
    block = text.split("rtn:")[1].split("awq:")[0]
    assert block.index("window_nlls") < block.index("mean_kld: 0.2") < block.index("window_klds: [0.1, 0.3]")
    assert "top1_agreement: 0.85" in block and "window_top1: [0.9, 0.8]" in block and "reference: {entry: fp32" in block
    entry = parse(tmp_path, text).profiles["cpu"].variants["rtn"]
    assert recorded_problems(entry) == []
    worse = judge(target, entry, _measured([0.2, 0.3], [0.9, 0.8], fp))
    assert worse.status == "fail" and "KL DIVERGENCE / TOP-1 REGRESSION" in worse.message
    assert "paired per-window dKLD over 2 windows: mean +0.050000 nats" in worse.message
    assert worse.kld["baseline_mean_kld"] == 0.2 and worse.to_dict()["kld"]["paired"]["n_worse"] == 1
    same = judge(target, entry, _measured([0.1, 0.3], [0.9, 0.8], fp))
    assert same.status == "pass"


def test_a_hand_edited_mean_kld_is_inconsistent(tmp_path):
    upd = EntryUpdate("cpu", "rtn", {"reference": {"entry": "fp32"}}, 30.0, [3.4011973816621555] * 2, {}, None)
    upd.kld = recorded_block(KldMeasured("fp32", 0.2, 0.85, [0.1, 0.3], [0.9, 0.8]))
    text, _ = apply_updates(tmp_path / "m.yaml", DOC, [upd])
    entry = parse(tmp_path, text.replace("mean_kld: 0.2", "mean_kld: 0.15")).profiles["cpu"].variants["rtn"]
    assert recorded_problems(entry) == ["the recorded mean_kld 0.15 is not the mean of its own per-window values (0.2)"]
    with pytest.raises(BaselineError, match="recorded KLD keys come together: window_top1 missing"):
        parse(tmp_path, text.replace("window_top1: [0.9, 0.8]", ""))


def test_record_block_in_a_partial_run_compares_the_first_windows():
    from pplgate.gate.kld import RecordedKld

    block = record_block(
        KldMeasured("fp32", 0.1, 0.9, [0.1], [0.9]), RecordedKld(0.2, 0.85, [0.1, 0.3], [0.9, 0.8]), 1, True
    )
    assert block["baseline_mean_kld"] == 0.1 and block["baseline_window_klds"] == [0.1] and block["paired"]["n"] == 1


def test_what_fails_in_this_session_names_relational_speed_and_bound_rules():
    from pplgate.gate.rules import RelationalRule, RuleResult, SpeedRule
    from pplgate.gate.verdict_text import session_failure

    def failing(*rules):
        return [RuleResult(r, False, "") for r in rules] + [RuleResult(KldRule(bound=1.0), True, "")]

    assert session_failure(failing(RelationalRule(ref="a", max_delta=0.0))) == "a relational rule fails"
    assert session_failure(failing(KldRule(ref="a", max_delta=0.0))) == "a relational rule fails"  # kld vs an entry
    assert session_failure(failing(SpeedRule(ref="a", min_ratio=0.8))) == "a speed rule fails"
    assert session_failure(failing(Top1Rule(bound=0.9))) == "a top1 bound fails"
    mixed = failing(SpeedRule(ref="a", min_ratio=0.8), RelationalRule(ref="a", max_rel=0.1), KldRule(bound=0.1))
    assert session_failure(mixed) == "a speed/relational rule fails and a kld bound fails"

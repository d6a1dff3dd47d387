"""The verdict on one entry, without a model or a pytest session: every branch of judge()."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import IMPROVED_TEXT

from pplgate.gate.record import FAILING, GateRecord, Status
from pplgate.gate.rules import AbsoluteRule, RelationalRule, RelativeRule, SpeedRule
from pplgate.gate.spec import EntrySpec, Recorded
from pplgate.gate.store import EntryUpdate
from pplgate.gate.verdict import (
    Measured,
    Target,
    is_partial,
    judge,
    measured_record,
    new_record,
    partial_update_refusal,
    recorded_problems,
    rerun_command,
)

NODE = "baselines/tiny.yaml::tiny[cpu-fp32]"
RERUN = f'pytest --update-baselines "{NODE}"'
FORCE = f'pytest --update-baselines --force-update "{NODE}"'
TARGET = Target(
    nodeid=NODE,
    name="tiny[cpu-fp32]",
    file="/repo/baselines/tiny.yaml",
    model="tiny",
    source="local directory /models/tiny",
    profile="cpu",
    device="cpu",
    seqlen=128,
)
NLLS = [10.0, 10.2, 10.1, 10.3]
PPL = math.exp(math.fsum(NLLS) / len(NLLS))
FP = {
    "dataset_sha256": "d" * 64,
    "n_tokens": 4096,
    "n_windows": 4,
    "n_windows_total": 32,
    "bos_added": False,
    "tokenizer_name": "GPT2TokenizerFast(tiny)",
    "tokenizer_sha256": "t" * 64,
    "seqlen": 128,
    "dtype": "float32",
    "variant": {"kind": "fp32", "dtype": "fp32"},
}
PROV = {"date": "2025-01-02", "device_name": "CPU", "pplgate": "0.1.0", "git_commit": "abc1234", "torch": "2.5.1"}
ABS = AbsoluteRule(max_delta=0.001)
HEADER = (
    "pplgate: tiny[cpu-fp32]\n  model tiny (local directory /models/tiny), profile cpu "
    "(device cpu, seqlen 128, 4/32 windows), variant fp32 (kind fp32, origin loaded)"
)
BASE_KEYS = {"nodeid", "file", "model", "profile", "variant", "kind", "device", "status", "tolerance"}
MEASURED_KEYS = {"ppl", "window_nlls", "n_windows", "n_windows_total", "partial", "origin", "wall_time_s"}
MEASURED_KEYS |= {"prepare_time_s"}
COMPARED_KEYS = {"baseline", "delta", "rel_delta", "baseline_window_nlls", "baseline_own_ppl", "hand_edited", "drift"}


def recorded(nlls=NLLS, ppl=None, provenance=PROV) -> Recorded:
    nlls = list(nlls)
    return Recorded(
        ppl=math.exp(math.fsum(nlls) / len(nlls)) if ppl is None else ppl, window_nlls=nlls, provenance=provenance
    )


def entry(rules=(ABS,), rec="default", fingerprint="default", name="fp32", kind="fp32") -> EntrySpec:
    return EntrySpec(
        name=name,
        kind=kind,
        params={},
        rules=list(rules),
        fingerprint=dict(FP) if fingerprint == "default" else fingerprint,
        recorded=recorded() if rec == "default" else rec,
        line=12,
    )


def measured(nlls=NLLS, fingerprint=None, n_windows_total=32) -> Measured:
    nlls = list(nlls)
    return Measured(
        ppl=math.exp(math.fsum(nlls) / len(nlls)),
        window_nlls=nlls,
        n_windows=len(nlls),
        n_windows_total=n_windows_total,
        fingerprint=dict(FP) if fingerprint is None else fingerprint,
        origin="loaded",
        wall_time_s=1.25,
        prepare_time_s=0.5,
    )


def run(e=None, m=None, *, session=None, session_speeds=None, **flags) -> GateRecord:
    prov = flags.pop("provenance", PROV)
    others = {"ppl": session or {}, "tokens_per_s": session_speeds or {}}
    rec = judge(TARGET, e or entry(), m or measured(), others=others, provenance=prov, **flags)
    again = GateRecord.from_dict(json.loads(json.dumps(rec.to_dict())))  # what the controller reads back
    assert again == rec and again.to_dict() == rec.to_dict() and again.message is None
    return rec


def shifted(delta=0.05, step=0.01):
    return [x + delta + step * i for i, x in enumerate(NLLS)]


# --------------------------------------------------------------------------- missing


def test_missing_entry_fails_with_the_command_that_creates_it():
    rec = run(entry(rec=None, fingerprint=None))
    assert rec.status is Status.MISSING and rec.status.failing
    assert rec.message == (
        f"{HEADER}\n  measured ppl {PPL:.6f}, but no baseline is recorded for this entry.\n"
        f"  Create it with:\n    {RERUN}"
    )
    assert "no baseline is recorded for this entry" in rec.message and RERUN in rec.message
    assert rec.rerun == RERUN and rec.update is None
    assert set(rec.to_dict()) == BASE_KEYS | MEASURED_KEYS | {"rerun"}
    assert rec.to_dict()["partial"] is None and rec.baseline is None and rec.rules is None


def test_missing_entry_with_update_is_created():
    rec = run(entry(rec=None, fingerprint=None), update=True)
    assert rec.status is Status.CREATED and rec.status.queued and not rec.status.failing
    assert rec.message is None and rec.rerun is None
    assert rec.update == EntryUpdate(
        profile="cpu", variant="fp32", fingerprint=FP, ppl=PPL, window_nlls=NLLS, provenance=PROV
    )
    assert rec.to_dict()["update"] == {
        "profile": "cpu",
        "variant": "fp32",
        "fingerprint": FP,
        "ppl": PPL,
        "window_nlls": NLLS,
        "provenance": PROV,
    }
    assert rec.rules is None  # no rule compares with this session
    assert set(rec.to_dict()) == BASE_KEYS | MEASURED_KEYS | {"update", "detectable"}


def test_created_entry_with_a_passing_relational_rule_records_that_rule():
    rules = [ABS, RelationalRule(ref="ref", max_delta=1.0)]
    rec = run(entry(rules, rec=None, fingerprint=None), session={"ref": PPL - 0.5}, update=True)
    assert rec.status is Status.CREATED
    assert rec.rules == [
        {
            "text": "[PASS] relational: ppl - ppl[ref] <= 1 (only worse counts): got +0.500000; "
            f"ref measured {PPL - 0.5:.6f} in this session",
            "passed": True,
            "type": "relational",
        }
    ]


def test_created_entry_refused_when_a_relational_rule_fails():
    rules = [RelationalRule(ref="ref", max_rel=0.000001, direction="both")]
    rec = run(entry(rules, rec=None, fingerprint=None), session={"ref": PPL * 1.01}, update=True)
    assert rec.status is Status.FAIL and rec.update is None and rec.rerun is None
    assert rec.message.startswith(
        f"{HEADER}\n  not updating: a relational rule fails in this session (re-recording cannot fix it):\n"
        "    [FAIL] relational: |(ppl - ppl[ref]) / ppl[ref]| <= 0.0001%: got -0.9901%; ref measured"
    )
    assert rec.message.endswith("in this session")
    assert rec.rules[0]["passed"] is False


# --------------------------------------------------------------------------- drift


@pytest.mark.parametrize(("field", "value"), [("n_tokens", 12345), ("tokenizer_sha256", "0" * 64)])
def test_protocol_drift_is_not_compared(field, value):
    worse = recorded([x + math.log(2) for x in NLLS])  # twice the ppl: a worse number is not looked at
    e = entry(fingerprint={**FP, field: value}, rec=worse)
    rec = run(e)
    assert rec.status is Status.DRIFT
    assert "PROTOCOL DRIFT" in rec.message and f"{field}: {value!r} -> {FP[field]!r}" in rec.message
    assert "PERPLEXITY REGRESSION" not in rec.message and "--force-update" in rec.message
    assert rec.message == (
        f"{HEADER}\n  PROTOCOL DRIFT: the measurement protocol differs from the recorded one in {field}:\n"
        f"    {field}: {value!r} -> {FP[field]!r}\n"
        f"  measured ppl {PPL:.6f} (recorded {worse.ppl:.6f}); the perplexity was not compared. "
        f"If the change is intended, re-record with:\n    {FORCE}"
    )
    assert rec.drift == [(field, value, FP[field])] and rec.to_dict()["drift"] == [[field, value, FP[field]]]
    assert rec.rerun == FORCE and rec.rules is None and rec.paired is None and rec.update is None
    assert set(rec.to_dict()) == BASE_KEYS | MEASURED_KEYS | COMPARED_KEYS | {"rerun"}


def test_drift_with_update_is_refused_without_force():
    rec = run(entry(fingerprint={**FP, "seqlen": 256}), update=True)
    assert rec.status is Status.DRIFT and rec.update is None
    assert rec.message.endswith(f"; refusing to update across a protocol change without --force-update:\n    {FORCE}")
    assert "refusing to update across a protocol change without --force-update" in rec.message


def test_force_alone_does_not_update():
    rec = run(entry(fingerprint={**FP, "seqlen": 256}), force=True)
    assert rec.status is Status.DRIFT and "the perplexity was not compared" in rec.message


def test_drift_with_update_and_force_is_updated():
    e = entry(fingerprint={**FP, "seqlen": 256}, rec=recorded(ppl=PPL * 2))
    rec = run(e, update=True, force=True)
    assert rec.status is Status.UPDATED and rec.message is None
    assert rec.update.fingerprint == FP and rec.update.ppl == PPL and rec.update.provenance == PROV
    assert rec.drift == [("seqlen", 256, 128)]
    assert rec.rules is None and rec.paired is None  # not compared across drift


def test_drift_with_update_and_force_still_refuses_a_failing_relational_rule():
    rules = [RelationalRule(ref="ref", max_delta=0.0)]
    rec = run(entry(rules, fingerprint={**FP, "seqlen": 256}), session={"ref": PPL - 1}, update=True, force=True)
    assert rec.status is Status.FAIL and rec.update is None and "not updating:" in rec.message
    assert [r["type"] for r in rec.rules] == ["relational"]


def test_drift_in_a_variant_param_names_the_nested_key():
    rec = run(entry(fingerprint={**FP, "variant": {"kind": "fp32", "dtype": "fp16"}}))
    assert "recorded one in variant.dtype:" in rec.message and "variant.dtype: 'fp16' -> 'fp32'" in rec.message
    assert "{'kind'" not in rec.message  # the changed key, not two whole dicts


def test_fingerprint_missing_from_the_file_is_drift():
    rec = run(entry(fingerprint=None))
    assert rec.status is Status.DRIFT
    assert "differs from the recorded one in fingerprint:\n" in rec.message
    assert "    fingerprint: None -> '(missing in the baseline file)'\n" in rec.message
    assert rec.drift == [("fingerprint", None, "(missing in the baseline file)")]


def test_a_field_one_side_lacks_reads_absent():
    fp = {k: v for k, v in FP.items() if k != "bos_added"}
    rec = run(entry(fingerprint=fp))
    assert "    bos_added: ABSENT -> False\n" in rec.message


# --------------------------------------------------------------------------- partial window runs


def test_partial_run_compares_with_the_first_recorded_windows():
    e = entry(rules=[AbsoluteRule(max_delta=1e-9)], rec=recorded(NLLS + [11.0, 12.0]))
    e.fingerprint["n_windows"] = 6  # the recorded run scored 6 windows; this one only 4 (not drift)
    rec = run(e, partial=True)
    assert rec.status is Status.PASS, rec.message
    assert rec.partial is True and rec.to_dict()["partial"] is True
    assert rec.baseline == pytest.approx(PPL, rel=1e-12) and rec.baseline_window_nlls == NLLS
    assert rec.hand_edited is False and rec.drift == []
    assert rec.paired.n == 4 and rec.paired.mean == 0


def test_partial_run_header_says_partial():
    e = entry(rec=recorded(NLLS + [11.0]), fingerprint={**FP, "n_windows": 5, "seqlen": 64})
    rec = run(e, partial=True)
    assert rec.status is Status.DRIFT  # another field still drifts
    assert rec.message.startswith(HEADER.replace("4/32 windows", "4/32 windows, PARTIAL"))
    assert "n_windows" not in rec.message.split("\n")[2]


def test_partial_run_over_more_windows_than_recorded_is_drift():
    rec = run(entry(rec=recorded(NLLS[:3])), partial=True)
    assert rec.status is Status.DRIFT
    assert rec.message == (
        f"{HEADER.replace('4/32 windows', '4/32 windows, PARTIAL')}\n"
        "  --pplgate-max-windows 4 exceeds the 3 recorded windows"
    )
    assert rec.baseline is None and rec.rerun is None and rec.drift is None


def test_partial_update_is_refused_before_measuring():
    assert partial_update_refusal(2, "cpu", 4) == (
        "refusing --update-baselines with --pplgate-max-windows 2: profile 'cpu' records max_windows=4; "
        "drop the override to update"
    )
    assert "refusing --update-baselines with --pplgate-max-windows 2" in partial_update_refusal(2, "cpu", None)
    assert partial_update_refusal(None, "cpu", 4) is None
    assert partial_update_refusal(4, "cpu", 4) is None


@pytest.mark.parametrize(
    ("override", "profile_max", "partial"),
    [(None, None, False), (None, 4, False), (4, 4, False), (2, 4, True), (2, None, True), (8, 4, True)],
)
def test_is_partial(override, profile_max, partial):
    assert is_partial(override, profile_max) is partial


# --------------------------------------------------------------------------- pass / fail / improved


def test_pass():
    rec = run()
    assert rec.status is Status.PASS and rec.message is None and rec.rerun is None and rec.update is None
    assert rec.baseline == PPL and rec.delta == 0 and rec.rel_delta == 0 and rec.hand_edited is False
    assert rec.baseline_own_ppl == pytest.approx(PPL) and rec.baseline_window_nlls == NLLS
    assert rec.rules == [
        {"text": "[PASS] absolute: |ppl - recorded| <= 0.001: got +0.000000", "passed": True, "type": "absolute"}
    ]
    assert rec.paired.n == 4 and rec.paired.n_worse == 0 and rec.paired.n_better == 0
    assert set(rec.to_dict()) == BASE_KEYS | MEASURED_KEYS | COMPARED_KEYS | {"rules", "paired", "detectable"}
    assert rec.to_dict()["paired"] == rec.paired.to_dict() and rec.to_dict()["status"] == "pass"
    assert rec.tolerance == "±0.001" and rec.kind == "fp32" and rec.variant == "fp32" and rec.device == "cpu"


def test_absolute_regression_message():
    e = entry(rec=recorded(NLLS, ppl=PPL * 0.9))
    rec = run(e, m=measured(shifted()))
    assert rec.status is Status.FAIL and rec.rerun == RERUN
    msg = rec.message
    assert "PERPLEXITY REGRESSION: measured" in msg and "vs recorded" in msg and "delta +" in msg
    assert "[FAIL] absolute: |ppl - recorded| <= 0.001: got +" in msg
    assert "paired per-window dNLL over 4 windows: mean +0.065000 nats, 95% CI [" in msg
    assert "(systematic shift); 4/4 windows worse" in msg
    assert RERUN in msg and "PROTOCOL DRIFT" not in msg
    assert "\n  recorded 2025-01-02 on CPU (pplgate 0.1.0, commit abc1234, torch 2.5.1)\n" in msg
    assert msg.endswith(f"  if the change is intended, re-record with:\n    {RERUN}")
    new = rec.ppl
    assert msg.startswith(
        f"{HEADER}\n  PERPLEXITY REGRESSION: measured {new:.6f} vs recorded "
        f"{PPL * 0.9:.6f}: delta {new - PPL * 0.9:+.6f} ({(new - PPL * 0.9) / (PPL * 0.9):+.4%})\n"
        "  rules (all must pass):\n    [FAIL] absolute: |ppl - recorded| <= 0.001: got +"
    )
    assert "edited by hand" in msg  # the recorded ppl was scaled by hand, its NLLs were not
    assert set(rec.to_dict()) == BASE_KEYS | MEASURED_KEYS | COMPARED_KEYS | {
        "rules",
        "paired",
        "detectable",
        "rerun",
        "inconsistent",
    }


def test_regression_without_provenance_says_unknown():
    rec = run(entry(rec=recorded(provenance={})), m=measured(shifted()))
    assert "\n  recorded ? on ? (pplgate ?, commit ?, torch ?)\n" in rec.message


def test_relative_rule_and_several_rules():
    rules = [AbsoluteRule(max_delta=1.0e9), RelativeRule(max_rel=0.01), RelativeRule(max_rel=0.01, direction="worse")]
    rec = run(entry(rules, rec=recorded(ppl=PPL * 1.02)))  # measured is 2% better than recorded
    assert rec.status is Status.IMPROVED
    assert "[PASS] absolute: |ppl - recorded| <= 1e+09" in rec.message
    assert "[FAIL] relative: |(ppl - recorded) / recorded| <= 1%: got -1.96" in rec.message
    assert "[PASS] relative: (ppl - recorded) / recorded <= 1% (only worse counts): got -1.96" in rec.message
    assert [r["passed"] for r in rec.rules] == [True, False, True]
    assert rec.tolerance == "±1e+09, ±1.00%, +1.00%"


def test_improvement_outside_tolerance_is_not_a_regression():
    worse_record = recorded(shifted())  # the recorded numbers are higher: the measured ppl is better
    rec = run(entry(rec=worse_record))
    assert rec.status is Status.IMPROVED and rec.status.failing
    msg = rec.message
    assert IMPROVED_TEXT in msg and "delta -" in msg
    assert "REGRESSION" not in msg and "edited by hand" not in msg
    assert "(systematic shift); 0/4 windows worse, 4 better" in msg
    assert RERUN in msg and rec.rerun == RERUN and rec.hand_edited is False
    assert rec.delta < 0 and rec.rel_delta == pytest.approx(rec.delta / rec.baseline)


def test_hand_edited_recorded_ppl_gets_a_note():
    rec = run(entry(rec=recorded(ppl=1234.5)))
    assert rec.status is Status.FAIL and rec.hand_edited is True  # 1234.5 is below the measured ppl
    assert rec.baseline_own_ppl == pytest.approx(PPL)
    assert (
        "\n  note: the recorded ppl 1234.500000 does not match its own recorded window NLLs "
        f"(exp(mean) = {PPL:.6f}); was the baseline file edited by hand?\n"
    ) in rec.message
    assert "does not match its own recorded window NLLs" in rec.message


def test_hand_edit_within_the_storage_rounding_is_no_note():
    stored = recorded([round(x + 1e-7 * (i % 5), 6) for i, x in enumerate(NLLS)], ppl=round(PPL, 6))
    rec = run(entry(rec=stored))
    assert rec.hand_edited is False and rec.inconsistent is None and rec.status is Status.PASS
    wide = [AbsoluteRule(max_delta=1.0)]  # the ppl edit passes the rule: the entry still does not
    rec = run(entry(wide, rec=recorded(ppl=PPL * (1 + 5e-6))))  # 10x the storage rounding: edited
    assert rec.hand_edited is True and rec.status is Status.INCONSISTENT


# --------------------------------------------------------------------------- relational rules


def test_relational_pass():
    rules = [ABS, RelationalRule(ref="fp16", max_rel=0.5)]
    rec = run(entry(rules), session={"fp16": PPL})
    assert rec.status is Status.PASS
    assert rec.rules[1]["text"] == (
        f"[PASS] relational: (ppl - ppl[fp16]) / ppl[fp16] <= 50% (only worse counts): got +0.0000%; "
        f"fp16 measured {PPL:.6f} in this session"
    )
    assert rec.tolerance == "±0.001, fp16+50.00%"


def test_failing_relational_rule_is_a_regression_even_when_better_than_recorded():
    rules = [AbsoluteRule(max_delta=10.0), RelationalRule(ref="fp16", max_delta=0.0)]
    rec = run(entry(rules, rec=recorded(ppl=PPL + 1)), session={"fp16": PPL - 1})
    assert rec.status is Status.FAIL and rec.ppl < rec.baseline
    assert "PERPLEXITY REGRESSION" in rec.message and "fp16 measured" in rec.message
    assert "[FAIL] relational: ppl - ppl[fp16] <= 0 (only worse counts): got +" in rec.message


def test_relational_reference_not_measured_fails():
    rec = run(entry([RelationalRule(ref="fp16", max_delta=1.0)]), session={})
    assert rec.status is Status.FAIL
    assert "[FAIL] relational: ppl - ppl[fp16] <= 1 (only worse counts): no reference value" in rec.message


def _fast(tokens_per_s: float) -> Measured:
    m = measured()
    return Measured(**{**m.__dict__, "tokens_per_s": tokens_per_s, "phases": {"load_s": 1.0, "evaluate_s": 1.25}})


def test_speed_rule_passes_and_fails_on_tokens_per_s_of_this_session():
    rules = [ABS, SpeedRule(ref="fp16", min_ratio=0.8)]
    ok = run(entry(rules), _fast(900.0), session={"fp16": PPL}, session_speeds={"fp16": 1000.0})
    assert ok.status is Status.PASS and ok.rules[1]["value"] == 0.9 and ok.tokens_per_s == 900.0
    assert ok.phases == {"load_s": 1.0, "evaluate_s": 1.25}
    slow = run(entry(rules), _fast(500.0), session={"fp16": PPL}, session_speeds={"fp16": 1000.0})
    assert slow.status is Status.FAIL  # slower than allowed is a regression, whatever the ppl did
    assert "SPEED REGRESSION (every perplexity rule passes)" in slow.message
    both = run(
        entry(rules, rec=recorded(ppl=PPL - 1)), _fast(500.0), session={"fp16": PPL}, session_speeds={"fp16": 1e3}
    )
    assert both.status is Status.FAIL and "PERPLEXITY REGRESSION" in both.message  # a ppl rule fails too
    assert "[FAIL] speed: tokens/s >= 0.8 x tokens/s[fp16] (same session, same device): got 0.500" in slow.message
    assert "(500.0 tok/s vs fp16 1,000.0 tok/s in this session)" in slow.message


def test_speed_rule_failure_under_update_refuses_and_says_which_rule():
    rules = [ABS, SpeedRule(ref="fp16", min_ratio=0.8)]
    rec = run(entry(rules), _fast(10.0), session={"fp16": PPL}, session_speeds={"fp16": 1000.0}, update=True)
    assert rec.status is Status.FAIL and rec.update is None
    assert "not updating: a speed rule fails in this session (re-recording cannot fix it)" in rec.message


def test_relational_failure_under_update_refuses():
    rules = [ABS, RelationalRule(ref="fp32", max_rel=0.000001, direction="both")]
    e = entry(rules, name="noisy", kind="test-perturbed")
    rec = run(e, session={"fp32": PPL * 0.9}, update=True)
    assert rec.status is Status.FAIL and rec.update is None
    assert "not updating: a relational rule fails in this session" in rec.message
    assert "[FAIL] relational: |(ppl - ppl[fp32]) / ppl[fp32]| <= 0.0001%: got " in rec.message
    assert "fp32 measured" in rec.message and "in this session" in rec.message
    assert [r["type"] for r in rec.rules] == ["absolute", "relational"]  # the comparison's rules stay
    assert "variant noisy (kind test-perturbed, origin loaded)" in rec.message
    assert rec.message.count("\n    [") == 1  # only the relational rule is listed


# --------------------------------------------------------------------------- update


def test_update_of_a_passing_entry():
    rec = run(update=True)
    assert rec.status is Status.UPDATED and rec.message is None and rec.rerun is None
    assert rec.update == EntryUpdate("cpu", "fp32", FP, PPL, NLLS, PROV)
    assert rec.rules[0]["passed"] is True and rec.paired is not None
    d = rec.to_dict()
    assert set(d) == BASE_KEYS | MEASURED_KEYS | COMPARED_KEYS | {"rules", "paired", "detectable", "update"}
    assert d["status"] == "updated" and d["update"]["variant"] == "fp32"


def test_update_re_records_a_regressed_entry():
    rec = run(entry(rec=recorded(ppl=1234.5)), update=True)
    assert rec.status is Status.UPDATED and rec.update.ppl == PPL
    assert rec.rules[0]["passed"] is False  # shown in the report: the old record disagreed
    assert rec.hand_edited is True


def test_update_without_provenance_writes_an_empty_block():
    rec = judge(TARGET, entry(rec=None, fingerprint=None), measured(), update=True)
    assert rec.update.provenance == {} and rec.status is Status.CREATED


def test_window_counts_and_origin_reach_the_record():
    m = replace(measured(), origin="cache", wall_time_s=3.0, prepare_time_s=7.5, n_windows_total=99)
    rec = run(m=m)
    d = rec.to_dict()
    assert (d["origin"], d["wall_time_s"], d["prepare_time_s"], d["n_windows"], d["n_windows_total"]) == (
        "cache",
        3.0,
        7.5,
        4,
        99,
    )
    assert "origin cache" in run(entry(rec=None, fingerprint=None), m=m).message


# --------------------------------------------------------------------------- the record


def test_status_values_are_the_json_strings():
    assert [s.value for s in Status] == [
        "pass",
        "fail",
        "improved",
        "drift",
        "missing",
        "inconsistent",
        "created",
        "updated",
        "not_written",
        "skipped",
        "error",
    ]
    assert Status("drift") is Status.DRIFT and Status.DRIFT == "drift"
    assert str(Status.NOT_WRITTEN) == "not_written" and f"{Status.FAIL}" == "fail" and f"{Status.PASS:>6}" == "  pass"
    assert json.dumps({"s": Status.IMPROVED}) == '{"s": "improved"}'
    assert {s for s in Status if s.failing} == set(FAILING)
    assert {s for s in Status if s.queued} == {Status.CREATED, Status.UPDATED}


def test_skipped_and_errored_records_have_the_same_class_with_fewer_fields():
    skipped = new_record(TARGET, entry(), Status.ERROR)
    skipped.mark_skipped("gpu tier: no CUDA device available")
    assert skipped.to_dict() == {
        "nodeid": NODE,
        "file": "/repo/baselines/tiny.yaml",
        "model": "tiny",
        "profile": "cpu",
        "variant": "fp32",
        "kind": "fp32",
        "device": "cpu",
        "status": "skipped",
        "tolerance": "±0.001",
        "skip_reason": "gpu tier: no CUDA device available",
    }
    errored = measured_record(TARGET, entry(), measured())
    assert errored.status is Status.ERROR and errored.partial is None
    errored.mark_error("RuntimeError: boom")
    assert set(errored.to_dict()) == BASE_KEYS | MEASURED_KEYS | {"error"}
    assert errored["error"] == "RuntimeError: boom" and errored["status"] == "error"
    assert GateRecord.from_dict(errored.to_dict()) == errored
    with pytest.raises(KeyError):
        errored["baseline"]


def test_not_written_keeps_what_was_queued():
    rec = run(update=True)
    rec.mark_not_written("the session was interrupted")
    assert rec.status is Status.NOT_WRITTEN and rec.queued_as is Status.UPDATED
    d = rec.to_dict()
    assert (d["status"], d["queued_as"], d["not_written"]) == ("not_written", "updated", "the session was interrupted")
    back = GateRecord.from_dict(d)
    assert back == rec and back.queued_as is Status.UPDATED and isinstance(back.update, EntryUpdate)


@pytest.mark.parametrize(
    "flags",
    [{}, {"update": True}, {"update": True, "force": True}, {"partial": True}],
    ids=["plain", "update", "force", "partial"],
)
@pytest.mark.parametrize(
    "case",
    ["missing", "drift", "pass", "fail", "improved", "relational"],
)
def test_every_record_round_trips_through_json(case, flags):
    e, m, session = {
        "missing": (entry(rec=None, fingerprint=None), measured(), {}),
        "drift": (entry(fingerprint={**FP, "dtype": "float16"}), measured(), {}),
        "pass": (entry(), measured(), {}),
        "fail": (entry(), measured(shifted()), {}),
        "improved": (entry(rec=recorded(shifted())), measured(), {}),
        "relational": (entry([RelationalRule(ref="r", max_delta=0.0)]), measured(), {"r": PPL - 1}),
    }[case]
    rec = run(e, m, session=session, **flags)  # run() asserts the round trip
    d = rec.to_dict()
    assert GateRecord.from_dict(d).to_dict() == d
    assert all(not isinstance(v, Status) for v in d.values())  # plain data for xdist and JSON
    assert (rec.message is not None) == rec.status.failing
    assert (rec.update is not None) == rec.status.queued


def test_from_dict_refuses_unknown_fields():
    with pytest.raises(ValueError, match="unknown gate record field"):
        GateRecord.from_dict({"nodeid": "x", "status": "pass", "colour": "red"})
    with pytest.raises(ValueError):
        GateRecord.from_dict({"nodeid": "x", "status": "great"})


def test_rerun_command():
    assert rerun_command(NODE) == RERUN
    assert rerun_command(NODE, force=True) == FORCE


# --------------------------------------------------------------------------- a recorded block that contradicts itself


def test_a_hand_edited_ppl_within_the_rules_is_never_a_pass():
    """The recorded ppl moved to match a worse model, its NLLs left alone: the rules pass, the entry does not."""
    worse = shifted()
    edited = recorded(NLLS, ppl=round(math.exp(math.fsum(worse) / len(worse)), 6))
    rec = run(entry(rec=edited), m=measured(worse))
    assert rec.status is Status.INCONSISTENT and rec.status.failing and rec.rerun == RERUN
    assert rec.rules[0]["passed"] is True and rec.hand_edited is True
    assert rec.inconsistent == [
        f"the recorded ppl {edited.ppl:.6f} does not match its own recorded window NLLs (exp(mean) = {PPL:.6f})"
    ]
    assert rec.message == (
        f"{HEADER}\n  RECORDED BASELINE INCONSISTENT: the entry's recorded numbers contradict each other, so they "
        "cannot vouch for this run:\n"
        f"    the recorded ppl {edited.ppl:.6f} does not match its own recorded window NLLs (exp(mean) = {PPL:.6f})\n"
        f"  measured ppl {rec.ppl:.6f}; the rules against the recorded ppl:\n"
        f"    {rec.rules[0]['text']}\n"
        f"  {rec.paired.describe()}\n"
        f"  {rec.detectable.describe()}\n"
        f"  was the baseline file edited by hand? Re-record the entry with:\n    {RERUN}"
    )
    assert "(systematic shift); 4/4 windows worse" in rec.message  # the NLLs still tell the truth
    partial = run(entry(rec=edited), m=measured(worse), partial=True)  # compared with exp(mean of the NLLs)
    assert partial.status is Status.FAIL and "edited by hand?" in partial.message


def test_window_nlls_of_the_wrong_length_fail_without_a_paired_comparison():
    short = recorded(NLLS[:3])  # fingerprint n_windows 4, this run scores 4
    rec = run(entry(rules=[AbsoluteRule(max_delta=1e9)], rec=short))
    assert rec.status is Status.INCONSISTENT and rec.paired is None
    assert rec.inconsistent == ["the recorded window_nlls hold 3 values, but fingerprint.n_windows is 4"]
    assert "    the recorded window_nlls hold 3 values, but fingerprint.n_windows is 4\n" in rec.message
    assert "no per-window comparison: the recorded window NLLs do not pair with this run's windows" in rec.message
    assert rec.message.endswith(f"Re-record the entry with:\n    {RERUN}")
    failing = run(entry(rec=short))  # the rule fails too: a regression, with the note
    assert failing.status is Status.FAIL and failing.paired is None
    assert (
        "\n  no per-window comparison: the recorded window NLLs do not pair with this run's windows\n"
        f"  {failing.detectable.describe()}\n"
        "  note: the recorded window_nlls hold 3 values, but fingerprint.n_windows is 4; was the baseline file edited "
        "by hand?\n" in failing.message
    )
    too_long = recorded(NLLS + [10.0])
    assert run(entry(rules=[AbsoluteRule(max_delta=1e9)], rec=too_long)).status is Status.INCONSISTENT


def test_update_rewrites_an_inconsistent_entry():
    """``--update-baselines`` repairs what the verdict refuses (no 'paired comparison needs equal lengths')."""
    for bad in (recorded(NLLS[:3]), recorded(NLLS + [10.0, 10.0]), recorded(NLLS, ppl=1234.5)):
        rec = run(entry(rec=bad), update=True)
        assert rec.status is Status.UPDATED and rec.message is None, rec.message
        assert rec.update == EntryUpdate("cpu", "fp32", FP, PPL, NLLS, PROV)
        assert rec.inconsistent


def test_inconsistent_entry_with_drift_is_drift_with_the_note():
    e = entry(rec=recorded(NLLS[:3]), fingerprint={**FP, "seqlen": 64})
    rec = run(e)
    assert rec.status is Status.DRIFT
    assert rec.message.endswith(
        f"re-record with:\n    {FORCE}\n  note: the recorded window_nlls hold 3 values, but fingerprint.n_windows "
        "is 4; was the baseline file edited by hand?"
    )
    assert run(e, update=True, force=True).status is Status.UPDATED


def test_a_length_mismatch_the_fingerprint_does_not_name_is_still_no_pass():
    fp = {k: v for k, v in FP.items() if k != "n_windows"}
    rec = judge(TARGET, entry(rec=recorded(NLLS[:3]), fingerprint=fp), measured())
    assert rec.status is Status.DRIFT  # n_windows: ABSENT -> 4
    e = entry(rec=recorded(NLLS[:3]), fingerprint={**FP, "n_windows": "4"})
    assert run(e).status is Status.DRIFT


def test_stored_blocks_are_never_flagged():
    """What --update-baselines writes (ppl and NLLs rounded to 6 decimals) is never taken for a hand edit."""

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.floats(0, 25, allow_nan=False), min_size=1, max_size=40))
    def check(nlls):
        ppl = math.exp(math.fsum(nlls) / len(nlls))
        stored = Recorded(ppl=round(ppl, 6), window_nlls=[round(x, 6) for x in nlls], provenance={})
        e = entry(rec=stored, fingerprint={**FP, "n_windows": len(nlls)})
        assert recorded_problems(e) == []

    check()


# --------------------------------------------------------------------------- overflow: a mean NLL above ~709.78 nats


def test_a_huge_measured_nll_is_a_readable_failure_not_an_overflow():
    huge = [800.0, 820.0, 790.0, 810.0]
    m = replace(measured(), ppl=math.inf, window_nlls=huge)
    rec = judge(TARGET, entry(), m)
    assert rec.status is Status.FAIL and rec.delta == math.inf
    assert "PERPLEXITY REGRESSION: measured inf (mean NLL 805 nats: exp overflows) vs recorded" in rec.message
    assert "[FAIL] absolute: |ppl - recorded| <= 0.001: got +inf" in rec.message
    refused = judge(TARGET, entry(), m, update=True)
    assert refused.status is Status.FAIL and refused.update is None
    assert "not updating: the measured perplexity is inf (mean NLL 805 nats: exp overflows); a baseline records " in (
        refused.message
    )
    created = judge(TARGET, entry(rec=None, fingerprint=None), m, update=True)
    assert created.status is Status.FAIL and created.update is None
    for r in (rec, refused, created):
        GateRecord.from_dict(json.loads(json.dumps(r.to_dict())))  # travels and reports


def test_huge_recorded_nlls_do_not_overflow_the_partial_reference_or_the_hand_edit_check():
    huge = [800.0, 820.0, 790.0, 810.0, 805.0, 815.0]
    e = entry(rec=recorded(huge, ppl=1e300), fingerprint={**FP, "n_windows": 6})
    rec = judge(TARGET, e, measured(), partial=True)  # reference exp(mean of 4 NLLs) overflows
    assert rec.baseline == math.inf and rec.baseline_own_ppl == math.inf and rec.hand_edited is True
    assert rec.status is Status.IMPROVED  # far better than an infinite reference; and the note says why
    assert "exp(mean) = inf (mean NLL 806.667 nats: exp overflows)); was the baseline file edited by hand?" in (
        rec.message
    )
    six = replace(measured(), n_windows=6, window_nlls=huge[:4] + [1, 1], fingerprint={**FP, "n_windows": 6})
    full = judge(TARGET, e, six)
    assert full.status is Status.IMPROVED and "exp overflows" in full.message


INTEL = {**PROV, "device_name": "Intel(R) Xeon(R) Processor", "cpu_isa": "AVX512", "blas": "mkl", "threads": 2}


def test_a_failure_on_another_machine_says_so():
    """A reviewer must tell "another CPU" from "your change": the machine facts of both runs, side by side."""
    amd = {**INTEL, "device_name": "AMD EPYC", "threads": 4}
    rec = run(entry(rec=recorded(provenance=INTEL)), m=measured(shifted()), provenance=amd)
    msg = rec.message
    assert "ANOTHER MACHINE than the record's (the device, thread count differ):" in msg
    assert "    recorded on Intel(R) Xeon(R) Processor (AVX512, mkl, 2 threads, torch 2.5.1)\n" in msg
    assert "    measured on AMD EPYC (AVX512, mkl, 4 threads, torch 2.5.1)\n" in msg
    assert msg.endswith(f"  if the change is intended, re-record with:\n    {RERUN}")


def test_a_failure_on_the_recording_machine_says_so():
    rec = run(entry(rec=recorded(provenance=INTEL)), m=measured(shifted()), provenance=dict(INTEL))
    assert (
        "machine: the recording one (Intel(R) Xeon(R) Processor (AVX512, mkl, 2 threads, torch 2.5.1))" in rec.message
    )
    assert "ANOTHER MACHINE" not in rec.message


def test_machine_facts_missing_from_an_old_record_are_not_a_difference():
    """A record from before the machine facts were kept compares on what it has (the device name)."""
    old = {"device_name": "Intel(R) Xeon(R) Processor", "torch": "2.5.1"}
    rec = run(entry(rec=recorded(provenance=old)), m=measured(shifted()), provenance=dict(INTEL))
    assert "machine: the recording one" in rec.message


def test_a_failure_names_the_measured_commit_and_what_changed_since_the_record():
    old = {**INTEL, "git_commit": "aaa111", "transformers": "5.15.0", "prepare_info": {"code_sha256": "c0de" * 16}}
    now = {**INTEL, "git_commit": "bbb222", "transformers": "5.17.0", "prepare_info": {"code_sha256": "beef" * 16}}
    msg = run(entry(rec=recorded(provenance=old)), m=measured(shifted()), provenance=now).message
    assert "commit aaa111" in msg and "\n  measured at commit bbb222; changed since the record: " in msg
    assert "transformers 5.15.0 -> 5.17.0, quantizer code c0dec0dec0de -> beefbeefbeef" in msg
    same = run(entry(rec=recorded(provenance=INTEL)), m=measured(shifted()), provenance=dict(INTEL)).message
    assert "; same versions as the record" in same

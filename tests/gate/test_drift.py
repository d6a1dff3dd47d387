"""Protocol fingerprints: what changed, named down to the nested key."""

from __future__ import annotations

from pplgate.gate.drift import ABSENT, FINGERPRINT_FIELDS, compare_fingerprints, describe_drift, drift_lines


def test_compare_fingerprints():
    old = {"n_tokens": 10, "seqlen": 128, "variant": {"kind": "fp32"}}
    new = {"n_tokens": 11, "seqlen": 128, "variant": {"kind": "fp32"}}
    assert compare_fingerprints(old, new) == [("n_tokens", 10, 11)]
    assert compare_fingerprints(old, new, ignore=("n_tokens",)) == []


def test_compare_fingerprints_names_the_nested_key_that_changed():
    cal = {"source_sha256": "a" * 64, "n_samples": 16}
    old = {"seqlen": 128, "variant": {"kind": "awq", "calibration": cal}}
    new = {"seqlen": 128, "variant": {"kind": "awq", "calibration": {**cal, "n_samples": 32}, "w_bit": 4}}
    assert compare_fingerprints(old, new) == [
        ("variant.calibration.n_samples", 16, 32),
        ("variant.w_bit", "ABSENT", 4),
    ]
    # a key only the old record has (e.g. one a newer pplgate no longer records) is drift too
    assert compare_fingerprints(new, old)[-1] == ("variant.w_bit", 4, "ABSENT")
    # a whole field missing from the recorded fingerprint, and a dict replaced by a scalar
    assert compare_fingerprints({"variant": {"kind": "fp32"}}, {"seqlen": 128, "variant": "x"}) == [
        ("seqlen", "ABSENT", 128),
        ("variant", {"kind": "fp32"}, "x"),
    ]


def test_fields_are_compared_in_their_order_and_others_ignored():
    old = {k: 1 for k in FINGERPRINT_FIELDS} | {"not_a_field": 1}
    new = {k: 2 for k in reversed(FINGERPRINT_FIELDS)} | {"not_a_field": 2}
    assert [k for k, _, _ in compare_fingerprints(old, new)] == list(FINGERPRINT_FIELDS)
    assert FINGERPRINT_FIELDS[0] == "dataset_sha256" and FINGERPRINT_FIELDS[-2:] == ("variant", "coverage")


def test_coverage_is_compared_once_a_record_holds_it():
    """A record from before coverage was fingerprinted is not drift; once recorded, a change is."""
    now = {"seqlen": 8, "coverage": "quantized 90 of 100 decoder weight parameters (90.0%)"}
    assert compare_fingerprints({"seqlen": 8}, now) == []
    was = {"seqlen": 8, "coverage": "quantized 100 of 100 decoder weight parameters (100.0%)"}
    assert compare_fingerprints(was, now) == [("coverage", was["coverage"], now["coverage"])]
    assert compare_fingerprints(was, {"seqlen": 8}) == [("coverage", was["coverage"], ABSENT)]


def test_nothing_recorded_is_no_drift():
    assert compare_fingerprints(None, {"seqlen": 1}) == []
    assert compare_fingerprints({}, {}) == []


def test_describe_and_lines():
    changes = [("n_tokens", 10, 11), ("variant.w_bit", ABSENT, 4), ("tokenizer_name", "a", ABSENT)]
    assert describe_drift(changes) == "n_tokens, variant.w_bit, tokenizer_name"
    assert (
        drift_lines(changes)
        == "    n_tokens: 10 -> 11\n    variant.w_bit: ABSENT -> 4\n    tokenizer_name: 'a' -> ABSENT"
    )
    assert drift_lines([("fingerprint", None, "(missing in the baseline file)")], indent="") == (
        "fingerprint: None -> '(missing in the baseline file)'"
    )

"""Unit tests of the baseline schema, tolerance rules, paired statistics and the update writer."""

from __future__ import annotations

import math
import multiprocessing as mp
import textwrap
from pathlib import Path

import pytest
from support import need_module

from pplgate.baselines import (
    BaselineError,
    EntryUpdate,
    Rule,
    compare_fingerprints,
    parse_baseline,
    read_raw,
    write_updates,
)
from pplgate.stats import paired_stats, t_quantile_975

GOOD = textwrap.dedent(
    """\
    # top comment
    schema_version: 1
    model:
      name: m
      source: some/hub-id   # a hub id
    profiles:
      cpu:
        device: cpu
        seqlen: 128
        variants:
          fp32:
            kind: fp32
            tolerance:
              - {type: absolute, max_delta: 0.01}   # keep me
          fp16:
            kind: fp16
            tolerance:
              - {type: relational, ref: fp32, max_delta: 0.5}
              - {type: relative, max_rel: 0.01, direction: worse}
          # trailing comment of the variants
    """
)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(text)
    return p


def test_parse_good(tmp_path):
    spec = parse_baseline(_write(tmp_path, GOOD))
    prof = spec.profiles["cpu"]
    assert prof.marker == "smoke" and prof.seqlen == 128 and prof.batch_size == 1 and prof.max_windows is None
    fp16 = prof.variants["fp16"]
    assert fp16.refs == ["fp32"]
    assert fp16.rules[0].direction == "worse" and fp16.rules[1].direction == "worse"
    assert prof.variants["fp32"].rules[0].direction == "both"
    assert prof.variants["fp32"].recorded is None


@pytest.mark.parametrize(
    ("old", "new", "keypath", "msg"),
    [
        ("seqlen: 128", "seqlen: 128\n    colour: red", "profiles.cpu.colour", "unknown key 'colour'"),
        ("kind: fp16", "kind: gptq-9", "profiles.cpu.variants.fp16.kind", "unknown variant kind 'gptq-9'"),
        ("ref: fp32", "ref: fp64", "profiles.cpu.variants.fp16.tolerance[0].ref", "unknown variant 'fp64'"),
        ("max_delta: 0.01}", "max_rel: 0.01}", "profiles.cpu.variants.fp32.tolerance[0]", "absolute rule takes"),
        ("type: relative", "type: fuzzy", "profiles.cpu.variants.fp16.tolerance[1].type", "unknown rule type"),
        ("schema_version: 1", "schema_version: 7", "schema_version", "unsupported schema_version"),
        ("  name: m\n", "", "model.name", "missing required key"),
        ("  cpu:\n", "  cpu tier:\n", "profiles.cpu tier", "profile name 'cpu tier' may only contain"),
        ("fp16:\n", "fp/16:\n", "profiles.cpu.variants.fp/16", "variant name 'fp/16' may only contain"),
    ],
)
def test_schema_errors_name_file_and_keypath(tmp_path, old, new, keypath, msg):
    assert old in GOOD
    p = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(BaselineError) as ei:
        parse_baseline(p)
    assert ei.value.keypath == keypath
    assert str(p) in str(ei.value) and msg in str(ei.value)


def test_missing_tolerance(tmp_path):
    text = GOOD.replace("        tolerance:\n          - {type: absolute, max_delta: 0.01}   # keep me\n", "")
    with pytest.raises(BaselineError, match=r"profiles\.cpu\.variants\.fp32\.tolerance: missing tolerance"):
        parse_baseline(_write(tmp_path, text))


def test_malformed_yaml_has_line(tmp_path):
    with pytest.raises(BaselineError, match=r"m\.yaml:\d+: <top>: malformed YAML"):
        parse_baseline(_write(tmp_path, GOOD.replace("device: cpu", "device: [cpu")))


def test_relational_cycle(tmp_path):
    text = GOOD.replace(
        "- {type: absolute, max_delta: 0.01}   # keep me", "- {type: relational, ref: fp16, max_delta: 0.1}"
    )
    with pytest.raises(BaselineError, match="cycle"):
        parse_baseline(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("rule", "ppl", "rec", "ref", "passed"),
    [
        (Rule("absolute", max_delta=0.1), 10.05, 10.0, None, True),
        (Rule("absolute", max_delta=0.1), 9.85, 10.0, None, False),  # two-sided: better also fails
        (Rule("absolute", max_delta=0.1, direction="worse"), 9.0, 10.0, None, True),
        (Rule("relative", max_rel=0.01), 10.2, 10.0, None, False),
        (Rule("relative", max_rel=0.01), 10.09, 10.0, None, True),
        (Rule("relational", max_delta=0.5, direction="worse", ref="fp16"), 10.4, None, 10.0, True),
        (Rule("relational", max_delta=0.5, direction="worse", ref="fp16"), 10.6, None, 10.0, False),
        (Rule("relational", max_rel=0.05, direction="worse", ref="fp16"), 10.6, None, 10.0, False),
        (Rule("absolute", max_delta=0.1), float("nan"), 10.0, None, False),
    ],
)
def test_rule_semantics(rule, ppl, rec, ref, passed):
    res = rule.check(ppl, rec, ref)
    assert res.passed is passed
    assert res.text.startswith("[PASS]" if passed else "[FAIL]")
    assert rule.type in res.text


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


def test_t_quantile_matches_scipy():
    stats = need_module("scipy.stats", "pip install scipy")
    for df in [*range(1, 60), 100, 147, 1000]:
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=6e-4), df


def test_paired_stats():
    s = paired_stats([1.1, 1.2, 1.3, 1.4], [1.0, 1.1, 1.2, 1.3])
    assert s.n == 4 and s.mean == pytest.approx(0.1) and s.n_worse == 4 and s.significant
    s = paired_stats([1.0, 1.2, 0.9, 1.1], [1.1, 1.1, 1.0, 1.0])
    assert not s.significant and s.n_worse == 2 and s.n_better == 2
    lo, hi = s.ci_low, s.ci_high
    half = 3.182 * s.sd / 2
    assert (lo, hi) == pytest.approx((s.mean - half, s.mean + half))
    one = paired_stats([1.0], [0.5])
    assert one.ci_low is None and "n/a" in one.describe()
    with pytest.raises(ValueError):
        paired_stats([1.0], [1.0, 2.0])


def _upd(variant: str, ppl: float) -> EntryUpdate:
    return EntryUpdate(
        profile="cpu",
        variant=variant,
        fingerprint={"n_tokens": 5, "variant": {"kind": variant}},
        ppl=ppl,
        window_nlls=[math.log(ppl)] * 3,
        provenance={"date": "today"},
    )


def test_write_updates_preserves_comments_and_order(tmp_path):
    p = _write(tmp_path, GOOD)
    rows = write_updates(p, [_upd("fp16", 12.3456789)])
    assert rows == [{"profile": "cpu", "variant": "fp16", "old": None, "new": 12.3456789, "applied": True}]
    text = p.read_text()
    for keep in ["# top comment", "# a hub id", "# keep me", "# trailing comment of the variants"]:
        assert keep in text
    assert text.index("fp32:") < text.index("fp16:") < text.index("recorded:")
    assert text.index("recorded:") < text.index("# trailing comment of the variants")
    assert "window_nlls: [2.513306, 2.513306, 2.513306]" in text
    spec = parse_baseline(p)
    assert spec.profiles["cpu"].variants["fp16"].recorded.ppl == pytest.approx(12.345679)
    rows = write_updates(p, [_upd("fp16", 13.0)])
    assert rows[0]["old"] == pytest.approx(12.345679)
    assert p.read_text().count("recorded:") == 1 and "# trailing comment of the variants" in p.read_text()
    assert not list(tmp_path.glob(".*.tmp"))


def _writer(args):
    path, variant, ppl = args
    write_updates(path, [_upd(variant, ppl)])


def test_concurrent_writers_merge(tmp_path):
    text = GOOD
    for name in ("a", "b", "c", "d"):
        text = text.replace(
            "      # trailing comment",
            f"      {name}:\n        kind: fp32\n        tolerance: [{{type: absolute, "
            f"max_delta: 1}}]\n      # trailing comment",
        )
    p = _write(tmp_path, text)
    jobs = [(str(p), v, 10.0 + i) for i, v in enumerate(["fp32", "fp16", "a", "b", "c", "d"])]
    with mp.get_context("spawn").Pool(3) as pool:
        pool.map(_writer, jobs)
    spec = parse_baseline(p)
    got = {v: s.recorded.ppl for v, s in spec.profiles["cpu"].variants.items()}
    assert got == {v: ppl for _, v, ppl in jobs}
    read_raw(p)


def test_git_commit_from_environment_for_trees_without_git(monkeypatch, tmp_path):
    from pplgate.provenance import git_commit

    monkeypatch.delenv("PPLGATE_GIT_COMMIT", raising=False)
    assert git_commit(str(tmp_path)) is None  # not a repository
    monkeypatch.setenv("PPLGATE_GIT_COMMIT", "abc1234")
    assert git_commit(str(tmp_path)) == "abc1234"

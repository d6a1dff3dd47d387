"""The baseline schema: validation errors name the file, the key path and the line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pplgate.errors import BaselineError
from pplgate.gate.rules import AbsoluteRule, RelationalRule, RelativeRule
from pplgate.gate.spec import DEVICE_MAPS, BaselineSpec, parse_baseline

KINDS = ("awq", "bf16", "fp16", "fp32", "rtn")  # the caller's registered kinds (no model code imported here)

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


def parse(path: Path, data=None) -> BaselineSpec:
    return parse_baseline(path, data, known_kinds=KINDS)


def test_parse_good(tmp_path):
    spec = parse(_write(tmp_path, GOOD))
    prof = spec.profiles["cpu"]
    assert prof.marker == "smoke" and prof.seqlen == 128 and prof.batch_size == 1 and prof.max_windows is None
    fp16 = prof.variants["fp16"]
    assert fp16.refs == ["fp32"]
    assert fp16.rules[0].direction == "worse" and fp16.rules[1].direction == "worse"
    assert prof.variants["fp32"].rules[0].direction == "both"
    assert prof.variants["fp32"].recorded is None


def test_rules_parse_into_their_classes(tmp_path):
    spec = parse(_write(tmp_path, GOOD))
    fp32, fp16 = spec.profiles["cpu"].variants["fp32"], spec.profiles["cpu"].variants["fp16"]
    assert fp32.rules == [AbsoluteRule(max_delta=0.01)]
    assert fp16.rules == [
        RelationalRule(ref="fp32", max_delta=0.5),
        RelativeRule(max_rel=0.01, direction="worse"),
    ]
    assert fp32.line == 11 and fp16.line == 15
    assert fp16.tolerance_text() == "fp32+0.5, +1.00%"
    assert spec.model.name == "m" and spec.model.source == "some/hub-id" and spec.model.revision is None


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
        parse(p)
    assert ei.value.keypath == keypath
    assert str(p) in str(ei.value) and msg in str(ei.value)


@pytest.mark.parametrize(
    ("old", "new", "keypath", "msg", "line"),
    [
        ("max_delta: 0.5}", "max_delta: 0.5, max_rel: 0.1}", "variants.fp16.tolerance[0]", "exactly one of", 18),
        ("max_delta: 0.5}", "max_rel: -1}", "tolerance[0].max_rel", "expected a non-negative number, got -1", 18),
        ("max_delta: 0.01}", "max_delta: .nan}", "tolerance[0].max_delta", "non-negative number, got nan", 14),
        ("max_delta: 0.01}", "max_delta: true}", "tolerance[0].max_delta", "non-negative number, got True", 14),
        ("max_rel: 0.01,", "max_delta: 0.01,", "fp16.tolerance[1]", "a relative rule takes max_rel (and no", 19),
        ("max_delta: 0.01}", "max_delta: 0.01, ref: fp16}", "fp32.tolerance[0].ref", "only relational rules take", 14),
        ("direction: worse}", "direction: up}", "tolerance[1].direction", "expected one of both, worse, got 'up'", 19),
        ("{type: relative,", "{type: [relative],", "tolerance[1].type", "unknown rule type ['relative'] (allo", 19),
        ("{type: relative,", "{kind: relative,", "tolerance[1].kind", "unknown key 'kind' (allowed: direction, ma", 19),
        ("ref: fp32, ", "", "tolerance[0].ref", "expected a non-empty string, got None", None),
        ("- {type: absolute, max_delta: 0.01}", "- [absolute]", "tolerance[0]", "expected a mapping, got", 14),
        ("device: cpu", "device: cpu\n    marker: nightly", "cpu.marker", "one of smoke, gpu, got 'nightly'", 9),
        ("seqlen: 128", "seqlen: 1", "profiles.cpu.seqlen", "expected an integer >= 2, got 1", 9),
        ("seqlen: 128", "seqlen: 128\n    batch_size: 2.5", "cpu.batch_size", "integer >= 1, got 2.5", 10),
        ("seqlen: 128", "seqlen: 128\n    max_windows: 0", "cpu.max_windows", "integer >= 1, got 0", 10),
        ("  source: some/hub-id", "  source: ''", "model.source", "expected a non-empty string, got ''", 5),
        ("  name: m\n", "  name: m x\n", "model.name", "'m x' may only contain letters", 4),
        ("kind: fp32\n", "kind: fp32\n        params: [1]\n", "fp32.params", "a mapping, got CommentedSeq", 13),
        ("kind: fp32\n", "kind: fp32\n        fingerprint: 3\n", "fp32.fingerprint", "expected a mapping, got int", 13),
        ("        tolerance:\n          - {type: absolute, max_delta: 0.01}   # keep me\n",
         "        tolerance: {type: absolute}\n", "fp32.tolerance", "expected a list of rules", 13),
    ],
)  # fmt: skip
def test_more_schema_errors_with_lines(tmp_path, old, new, keypath, msg, line):
    assert old in GOOD
    p = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(BaselineError) as ei:
        parse(p)
    assert ei.value.keypath.endswith(keypath), ei.value.keypath
    assert msg in str(ei.value)
    assert ei.value.line == line


def test_missing_tolerance(tmp_path):
    text = GOOD.replace("        tolerance:\n          - {type: absolute, max_delta: 0.01}   # keep me\n", "")
    with pytest.raises(BaselineError, match=r"profiles\.cpu\.variants\.fp32\.tolerance: missing tolerance"):
        parse(_write(tmp_path, text))


def test_malformed_yaml_has_line(tmp_path):
    with pytest.raises(BaselineError, match=r"m\.yaml:\d+: <top>: malformed YAML"):
        parse(_write(tmp_path, GOOD.replace("device: cpu", "device: [cpu")))


def test_relational_cycle(tmp_path):
    text = GOOD.replace(
        "- {type: absolute, max_delta: 0.01}   # keep me", "- {type: relational, ref: fp16, max_delta: 0.1}"
    )
    with pytest.raises(BaselineError, match="cycle"):
        parse(_write(tmp_path, text))


def test_relational_self_reference(tmp_path):
    text = GOOD.replace("ref: fp32", "ref: fp16")
    with pytest.raises(BaselineError, match=r"tolerance\[0\]\.ref: a variant cannot be relative to itself"):
        parse(_write(tmp_path, text))


def test_longer_cycle_through_three_entries(tmp_path):
    text = GOOD.replace(
        "- {type: absolute, max_delta: 0.01}   # keep me", "- {type: relational, ref: c, max_delta: 0.1}"
    ).replace(
        "      # trailing comment",
        "      c:\n        kind: rtn\n        tolerance: [{type: relational, ref: fp16, max_rel: 0.1}]\n"
        "      # trailing comment",
    )
    with pytest.raises(BaselineError) as ei:
        parse(_write(tmp_path, text))
    assert "relational rules form a cycle" in str(ei.value) and ei.value.keypath.endswith(".tolerance")


@pytest.mark.parametrize(
    ("data", "keypath", "msg"),
    [
        ("", "", "the file is empty"),
        ([1, 2], "", "expected a mapping, got list"),
        ({"schema_version": 1, "model": {"name": "m", "source": "s"}, "profiles": {}}, "profiles", "at least one"),
        ({"schema_version": 1, "model": "m", "profiles": {"p": {}}}, "model", "expected a mapping, got str"),
        (
            {"schema_version": 1, "model": {"name": "m", "source": "s"}, "profiles": {"p": {"device": "cpu"}}},
            "profiles.p.variants",
            "missing required key",
        ),
        (
            {"schema_version": 1, "model": {"name": "m", "source": "s"},
             "profiles": {"p": {"device": "cpu", "variants": {}}}},
            "profiles.p.variants",
            "at least one variant is needed",
        ),
    ],
)  # fmt: skip
def test_top_level_errors_from_data(tmp_path, data, keypath, msg):
    empty = _write(tmp_path, "# nothing but a comment\n")
    with pytest.raises(BaselineError) as ei:
        parse(empty, None if data == "" else data)
    assert ei.value.keypath == keypath and msg in str(ei.value)


@pytest.mark.parametrize(
    ("recorded", "msg"),
    [
        ("{ppl: 0, window_nlls: [1.0]}", "recorded.ppl: expected a positive number, got 0"),
        ("{ppl: true, window_nlls: [1.0]}", "recorded.ppl: expected a positive number, got True"),
        ("{ppl: 2.0, window_nlls: []}", "recorded.window_nlls: expected a non-empty list of numbers"),
        ("{ppl: 2.0, window_nlls: [a]}", "recorded.window_nlls: expected a non-empty list of numbers"),
        ("{ppl: 2.0}", "recorded.window_nlls: missing required key"),
        ("{ppl: 2.0, window_nlls: [1.0], when: today}", "recorded.when: unknown key 'when'"),
        ("[2.0]", "recorded: expected a mapping, got CommentedSeq"),
    ],
)
def test_recorded_block_is_validated(tmp_path, recorded, msg):
    text = GOOD.replace("kind: fp32\n", f"kind: fp32\n        recorded: {recorded}\n")
    with pytest.raises(BaselineError) as ei:
        parse(_write(tmp_path, text))
    assert msg in str(ei.value)


def test_recorded_block_is_read(tmp_path):
    text = GOOD.replace(
        "kind: fp32\n",
        "kind: fp32\n        fingerprint: {seqlen: 128, variant: {kind: fp32}}\n"
        "        recorded: {ppl: 7, window_nlls: [2, 1.5], provenance: {date: today}}\n",
    )
    fp32 = parse(_write(tmp_path, text)).profiles["cpu"].variants["fp32"]
    assert fp32.recorded.ppl == 7.0 and isinstance(fp32.recorded.ppl, float)
    assert fp32.recorded.window_nlls == [2.0, 1.5] and fp32.recorded.provenance == {"date": "today"}
    assert fp32.fingerprint == {"seqlen": 128, "variant": {"kind": "fp32"}} and type(fp32.fingerprint) is dict


def test_marker_defaults_from_device(tmp_path):
    text = GOOD.replace("device: cpu", "device: cuda:1")
    prof = parse(_write(tmp_path, text)).profiles["cpu"]
    assert prof.marker == "gpu" and prof.device == "cuda:1" and prof.device_map is None


def test_known_kinds_come_from_the_caller(tmp_path):
    p = _write(tmp_path, GOOD)
    with pytest.raises(BaselineError, match=r"unknown variant kind 'fp16' \(known: fp32\)"):
        parse_baseline(p, known_kinds=("fp32",))
    assert parse_baseline(p, known_kinds=("fp16", "fp32")).profiles["cpu"].variants["fp16"].kind == "fp16"


def test_baseline_profile_device_map_is_validated(tmp_path):
    body = """schema_version: 1
model: {name: m, source: org/m}
profiles:
  gpu:
    device: cuda
    device_map: DM
    variants:
      fp16: {kind: fp16, tolerance: [{type: absolute, max_delta: 0.01}]}
"""
    good = tmp_path / "good.yaml"
    good.write_text(body.replace("DM", "balanced"))
    assert parse(good).profiles["gpu"].device_map == "balanced"
    bad = tmp_path / "bad.yaml"
    bad.write_text(body.replace("DM", "everywhere"))
    with pytest.raises(BaselineError, match=r"device_map.*must be one of auto, balanced, sequential"):
        parse(bad)
    assert DEVICE_MAPS == ("auto", "balanced", "sequential")


def test_resolve_path(tmp_path, monkeypatch):
    spec = parse(_write(tmp_path, GOOD))
    monkeypatch.setenv("PPLGATE_TEST_MODELS", str(tmp_path / "models"))
    monkeypatch.delenv("PPLGATE_TEST_UNSET", raising=False)
    assert spec.resolve_path(None) is None
    assert spec.resolve_path("org/model") == "org/model"  # a hub id stays as it is
    assert spec.resolve_path("./models/x") == str((tmp_path / "models" / "x").resolve())
    assert spec.resolve_path("$PPLGATE_TEST_MODELS/x") == str(tmp_path / "models" / "x")
    assert spec.resolve_path("/abs/x") == "/abs/x"
    with pytest.raises(BaselineError, match=r"'\$PPLGATE_TEST_UNSET/x': environment variable not set"):
        spec.resolve_path("$PPLGATE_TEST_UNSET/x")

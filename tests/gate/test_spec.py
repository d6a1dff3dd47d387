"""The baseline schema: validation errors name the file, the key path and the line."""

from __future__ import annotations

import math
import re
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
        ("max_rel: 0.01,", "max_rel: 1e308,", "tolerance[1].max_rel", "1e+308 is no tolerance (a relative bound", 19),
        ("max_rel: 0.01,", "max_rel: 11,", "tolerance[1].max_rel", "11 is no tolerance (a relative bound above 10", 19),
        ("max_rel: 0.01,", "max_rel: .inf,", "tolerance[1].max_rel", "expected a non-negative number, got inf", 19),
        ("max_rel: 0.01,", "max_rel: -.inf,", "tolerance[1].max_rel", "expected a non-negative number, got -inf", 19),
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
        ("kind: fp32\n", "kind: fp32\n        params: [1]\n", "fp32.params", "a mapping, got list", 13),
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
        ("{ppl: 0, window_nlls: [1.0]}", "recorded.ppl: expected a finite perplexity >= 1, got 0"),
        ("{ppl: true, window_nlls: [1.0]}", "recorded.ppl: expected a finite perplexity >= 1, got True"),
        ("{ppl: 2.0, window_nlls: []}", "recorded.window_nlls: expected a non-empty list of numbers"),
        ("{ppl: 2.0, window_nlls: [a]}", "recorded.window_nlls[0]: expected a finite number >= 0"),
        ("{ppl: 2.0}", "recorded.window_nlls: missing required key"),
        ("{ppl: 2.0, window_nlls: [1.0], when: today}", "recorded.when: unknown key 'when'"),
        ("[2.0]", "recorded: expected a mapping, got list"),
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


# --------------------------------------------------------------------------- hostile files: one clear error each

REC = "kind: fp32\n"  # where a recorded block goes (the fp32 entry, line 13)
GPU = (
    "  gpu:\n    device: cuda\n    variants:\n      big:\n        kind: fp16\n"
    "        tolerance: [{type: absolute, max_delta: 1}]\n"
)
NLL_LIST = (
    "kind: fp32\n        recorded:\n          ppl: 2.0\n          window_nlls:\n"
    "            - 0.693147\n            - X\n"
)


def _rec(block: str) -> tuple[str, str]:
    return REC, f"{REC}        recorded: {block}\n"


HOSTILE = [
    # recorded numbers that cannot be right: schema errors naming the fix
    (
        "nll-nan",
        _rec("{ppl: 2.0, window_nlls: [.nan]}"),
        "recorded.window_nlls[0]",
        "finite number >= 0 (a window's mean NLL in nats), got nan; these numbers are written by --update-baselines",
        13,
    ),
    ("nll-inf", _rec("{ppl: 2.0, window_nlls: [0.6, .inf]}"), "recorded.window_nlls[1]", "got inf", 13),
    ("nll-negative", _rec("{ppl: 2.0, window_nlls: [-0.5]}"), "recorded.window_nlls[0]", "got -0.5", 13),
    ("nll-bool", _rec("{ppl: 2.0, window_nlls: [true]}"), "recorded.window_nlls[0]", "got True", 13),
    ("nll-string", _rec("{ppl: 2.0, window_nlls: ['0.7']}"), "recorded.window_nlls[0]", "got '0.7'", 13),
    (
        "nll-huge-int",
        _rec("{ppl: 2.0, window_nlls: [1" + "0" * 400 + "]}"),
        "recorded.window_nlls[0]",
        "... (401 characters)",
        13,
    ),
    ("nll-line-of-the-item", (REC, NLL_LIST.replace("X", ".nan")), "recorded.window_nlls[1]", "got nan", 17),
    (
        "nlls-not-a-list",
        _rec("{ppl: 2.0, window_nlls: 0.7}"),
        "recorded.window_nlls",
        "a non-empty list of numbers",
        13,
    ),
    (
        "ppl-inf",
        _rec("{ppl: .inf, window_nlls: [0.7]}"),
        "recorded.ppl",
        "a finite perplexity >= 1, got inf; these numbers",
        13,
    ),
    ("ppl-nan", _rec("{ppl: .nan, window_nlls: [0.7]}"), "recorded.ppl", "a finite perplexity >= 1, got nan", 13),
    ("ppl-below-1", _rec("{ppl: 0.5, window_nlls: [0.7]}"), "recorded.ppl", "a finite perplexity >= 1, got 0.5", 13),
    ("ppl-huge-int", _rec("{ppl: 1" + "0" * 400 + ", window_nlls: [0.7]}"), "recorded.ppl", "(401 characters)", 13),
    (
        "recorded-extra-key",
        _rec("{ppl: 2.0, window_nlls: [0.7], note: hi}"),
        "recorded.note",
        "unknown key 'note' (allowed: layers, ppl, provenance, window_nlls)",
        13,
    ),
    (
        "provenance-list",
        _rec("{ppl: 2.0, window_nlls: [0.7], provenance: [a]}"),
        "recorded.provenance",
        "expected a mapping, got list",
        13,
    ),
    (
        "provenance-string",
        _rec("{ppl: 2.0, window_nlls: [0.7], provenance: today}"),
        "recorded.provenance",
        "expected a mapping, got str",
        13,
    ),
    (
        "fingerprint-list",
        (REC, REC + "        fingerprint: [a]\n"),
        "fp32.fingerprint",
        "expected a mapping, got list",
        13,
    ),
    (
        "fingerprint-string",
        (REC, REC + "        fingerprint: abc\n"),
        "fp32.fingerprint",
        "expected a mapping, got str",
        13,
    ),
    ("params-list", (REC, REC + "        params: []\n"), "fp32.params", "expected a mapping, got list", 13),
    # tolerance rules
    (
        "max-delta-negative",
        ("max_delta: 0.01}", "max_delta: -1}"),
        "tolerance[0].max_delta",
        "non-negative number, got -1",
        14,
    ),
    ("max-rel-nan", ("max_rel: 0.01,", "max_rel: .nan,"), "tolerance[1].max_rel", "non-negative number, got nan", 19),
    (
        "max-delta-inf",
        ("max_delta: 0.01}", "max_delta: .inf}"),
        "tolerance[0].max_delta",
        "non-negative number, got inf",
        14,
    ),
    (
        "max-delta-huge-int",
        ("max_delta: 0.01}", "max_delta: 1" + "0" * 400 + "}"),
        "tolerance[0].max_delta",
        "(401 characters)",
        14,
    ),
    (
        "max-delta-string",
        ("max_delta: 0.01}", "max_delta: '0.01'}"),
        "tolerance[0].max_delta",
        "non-negative number, got '0.01'",
        14,
    ),
    (
        "direction-typo",
        ("direction: worse}", "direction: wrose}"),
        "tolerance[1].direction",
        "expected one of both, worse, got 'wrose'",
        19,
    ),
    ("direction-case", ("direction: worse}", "direction: Worse}"), "tolerance[1].direction", "got 'Worse'", 19),
    (
        "ref-other-profile",
        ("ref: fp32", "ref: big"),
        "cpu.variants.fp16.tolerance[0].ref",
        "'big' is a variant of profile gpu, and a relational rule compares entries of one profile",
        18,
    ),
    (
        "ref-unknown",
        ("ref: fp32", "ref: nowhere"),
        "tolerance[0].ref",
        "unknown variant 'nowhere' (variants of profile cpu: fp32, fp16)",
        18,
    ),
    # profile values
    ("seqlen-0", ("seqlen: 128", "seqlen: 0"), "profiles.cpu.seqlen", "expected an integer >= 2, got 0", 9),
    (
        "seqlen-string",
        ("seqlen: 128", "seqlen: '128'"),
        "profiles.cpu.seqlen",
        "expected an integer >= 2, got '128'",
        9,
    ),
    (
        "batch-size-bool",
        ("seqlen: 128", "seqlen: 128\n    batch_size: true"),
        "cpu.batch_size",
        "integer >= 1, got True",
        10,
    ),
    (
        "max-windows-float",
        ("seqlen: 128", "seqlen: 128\n    max_windows: 4.0"),
        "cpu.max_windows",
        "integer >= 1, got 4.0",
        10,
    ),
    (
        "device-banana",
        ("device: cpu", "device: banana"),
        "profiles.cpu.device",
        "expected cpu, cuda or cuda:N, got 'banana'",
        8,
    ),
    ("device-cuda-letter", ("device: cpu", "device: cuda:x"), "profiles.cpu.device", "got 'cuda:x'", 8),
    (
        "device-map-typo",
        ("device: cpu", "device: cpu\n    device_map: everywhere"),
        "cpu.device_map",
        "must be one of auto",
        9,
    ),
    (
        "profile-without-variants",
        ("device: cpu\n    seqlen: 128\n    variants:", "device: cpu\n    seqlen: 128\n  x:\n    variants:"),
        "profiles.cpu.variants",
        "missing required key",
        8,
    ),
    ("profile-null", ("  cpu:\n", "  empty:\n  cpu:\n"), "profiles.empty", "expected a mapping, got null", 7),
    # names
    (
        "variant-name-long",
        ("fp16:\n", "v" * 101 + ":\n"),
        "variants." + "v" * 101,
        "is longer than 100 characters (it becomes a test id)",
        15,
    ),
    ("variant-name-very-long", ("fp16:\n", "v" * 2000 + ":\n"), "", "malformed YAML", 15),
    (
        "profile-name-long",
        ("  cpu:\n", "  " + "p" * 101 + ":\n"),
        "profiles." + "p" * 101,
        "longer than 100 characters",
        7,
    ),
    ("model-name-long", ("  name: m", "  name: " + "m" * 101), "model.name", "model name 'mmmm", 4),
    (
        "model-name-date",
        ("  name: m", "  name: 2001-12-14"),
        "model.name",
        "expected a non-empty string, got datetime.date(2001, 12, 14)",
        4,
    ),
    # the document
    (
        "unknown-top-key",
        ("schema_version: 1\n", "schema_version: 1\ncolour: red\n"),
        "colour",
        "unknown key 'colour' (allowed: model, profiles, schema_version, tests)",
        3,
    ),
    (
        "schema-version-string",
        ("schema_version: 1", "schema_version: '1'"),
        "schema_version",
        "expected the integer 1, got the string '1': write schema_version: 1 without quotes",
        2,
    ),
    (
        "schema-version-float",
        ("schema_version: 1", "schema_version: 1.0"),
        "schema_version",
        "unsupported schema_version 1.0 (this pplgate reads the integer 1)",
        2,
    ),
    (
        "schema-version-bool",
        ("schema_version: 1", "schema_version: true"),
        "schema_version",
        "unsupported schema_version True",
        2,
    ),
    (
        "duplicate-key",
        ("seqlen: 128", "seqlen: 128\n    seqlen: 256"),
        "",
        "malformed YAML: duplicate key 'seqlen': a key may appear only once "
        "in a mapping (the mapping starts at line 8)",
        10,
    ),
    (
        "duplicate-variant",
        ("      # trailing", "      fp32:\n        kind: fp32\n      # trailing"),
        "",
        "duplicate key 'fp32'",
        20,
    ),
    (
        "tab-indent",
        ("    device: cpu", "\tdevice: cpu"),
        "",
        "malformed YAML: found character '\\t' that cannot start any token",
        8,
    ),
    ("second-document", ("      # trailing comment of the variants\n", "---\nx: 1\n"), "", "malformed YAML", 20),
    ("empty-file", (None, ""), "", "the file is empty", None),
    ("only-comments", (None, "# a baseline\n# nothing yet\n"), "", "the file is empty", None),
    (
        "profile-names-equal-as-text",
        (
            "  cpu:\n",
            "  1:\n    device: cpu\n    variants: {x: {kind: fp32, tolerance: [{type: absolute, max_delta: 1}]}}\n"
            "  '1':\n",
        ),
        "profiles.1",
        "profile name '1' is given twice (as 1 at line 7 and as '1'); rename one",
        10,
    ),
    (
        "variant-names-equal-as-text",
        ("fp16:\n", "true:\n        kind: fp16\n        tolerance: [{type: absolute, max_delta: 1}]\n      'True':\n"),
        "variants.True",
        "variant name 'True' is given twice (as True at line 15 and as 'True')",
        18,
    ),
    (
        "deep-nesting",
        (REC, REC + "        params: {a: " + "[" * 2000 + "]" * 2000 + "}\n"),
        "",
        "nested too deeply",
        None,
    ),
    ("only-a-scalar", (None, "just text\n"), "", "expected a mapping, got str", None),
]


@pytest.mark.parametrize(
    ("old_new", "keypath", "fragment", "line"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE]
)
def test_hostile_files_give_one_clear_error(tmp_path, old_new, keypath, fragment, line):
    old, new = old_new
    if old is None:
        text = new
    else:
        assert old in GOOD + GPU, old
        text = (GOOD + GPU).replace(old, new, 1)
    p = _write(tmp_path, text)
    with pytest.raises(BaselineError) as ei:
        parse(p)
    err = ei.value
    assert err.keypath.endswith(keypath), err.keypath
    assert fragment in str(err), str(err)
    assert err.line == line
    assert str(err).startswith(f"{p}{'' if line is None else f':{line}'}: {err.keypath or '<top>'}: ")


def test_a_bom_and_a_file_of_crlf_lines_are_read_like_any_other(tmp_path):
    plain_spec = parse(_write(tmp_path, GOOD))
    for text in ("\ufeff" + GOOD, GOOD.replace("\n", "\r\n")):
        spec = parse(_write(tmp_path, text))
        assert spec.profiles["cpu"].variants.keys() == plain_spec.profiles["cpu"].variants.keys()
        assert spec.profiles["cpu"].variants["fp16"].line == 15


def test_a_profile_may_ask_for_more_windows_than_exist(tmp_path):
    """``max_windows`` above the total is valid: the engine scores every window and records how many."""
    spec = parse(_write(tmp_path, GOOD.replace("seqlen: 128", "seqlen: 128\n    max_windows: 1000000")))
    assert spec.profiles["cpu"].max_windows == 1000000


def test_an_integer_variant_name_is_a_name(tmp_path):
    spec = parse(_write(tmp_path, GOOD.replace("fp16:\n", "16:\n").replace("ref: fp32", "ref: fp32")))
    assert "16" in spec.profiles["cpu"].variants and spec.profiles["cpu"].variants["16"].line == 15


# --------------------------------------------------------------------------- fuzzing: only BaselineError escapes

RICH = (
    GOOD.replace(
        REC,
        REC + "        fingerprint: {seqlen: 128, n_windows: 2, variant: {kind: fp32}}\n"
        "        recorded:\n          ppl: 2.0\n          window_nlls: [0.693147, 0.693147]\n"
        "          provenance: {date: '2025-01-02', device_name: CPU}\n",
    )
    + GPU
)
ODD = [
    ".nan", ".inf", "-.inf", "-1", "0", "0.5", "true", "null", "[]", "{}", "''", "'x'", "1" + "0" * 400,
    "!!binary aGk=", "!!set {a}", "!!python/object:os.system ls", "&a 1", "*a", "2001-12-14", "0x10",
    "[1, [2, [3]]]", "{a: {b: c}}", "v" * 1100, "\"\\x00\"", "!!float x", "[", "}", "#", "'", "\t",
]  # fmt: skip
SCALAR = re.compile(r"(?<=[:\[,]) *([^\s,\[\]{}#:]+)(?=\s*(?:[,\]}]|#|$))", re.M)  # a value, not a key


def _mutate(data) -> str:
    """1-3 edits of :data:`RICH`: a scalar replaced by an odd one, a line deleted/duplicated, characters typed."""
    from hypothesis import strategies as st

    text = RICH
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["scalar", "scalar", "scalar", "delete", "duplicate", "chars"]))
        if how == "scalar":
            spans = [m.span(1) for m in SCALAR.finditer(text)]
            a, b = spans[data.draw(st.integers(0, len(spans) - 1))]
            text = text[:a] + data.draw(st.sampled_from(ODD)) + text[b:]
            continue
        lines = text.split("\n")
        i = data.draw(st.integers(0, len(lines) - 1))
        if how == "delete":
            del lines[i]
        elif how == "duplicate":
            lines.insert(data.draw(st.integers(0, len(lines))), lines[i])
        else:
            pos = data.draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:pos] + data.draw(st.text(max_size=4)) + lines[i][pos:]
        text = "\n".join(lines)
    return text


def _check_parse(p: Path, text: str) -> None:
    """``text`` parses into a spec the gate can use, or raises :class:`BaselineError`; nothing else escapes."""
    from pplgate.gate.validator import MAX_NAME_LEN

    p.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        spec = parse(p)
    except BaselineError:
        return
    for profile in spec.profiles.values():  # what validation lets through is what the gate can use
        assert len(profile.name) <= MAX_NAME_LEN and profile.seqlen >= 2, text
        for e in profile.variants.values():
            assert e.rules and all(r.refs == () or r.refs[0] in profile.variants for r in e.rules), text
            if e.recorded is not None:
                assert math.isfinite(e.recorded.ppl) and e.recorded.ppl >= 1, text
                assert all(math.isfinite(x) and x >= 0 for x in e.recorded.window_nlls), text
                assert isinstance(e.recorded.provenance, dict), text


def test_every_scalar_replaced_by_every_odd_value(tmp_path):
    assert parse(_write(tmp_path, RICH)).profiles["cpu"].variants["fp32"].recorded.ppl == 2.0
    spans = [m.span(1) for m in SCALAR.finditer(RICH)]
    assert len(spans) == 27
    for a, b in spans:
        for odd in ODD:
            _check_parse(tmp_path / "odd.yaml", RICH[:a] + odd + RICH[b:])


def test_mutated_files_raise_only_baseline_errors(tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def check(data):
        _check_parse(tmp_path / "fuzz.yaml", _mutate(data))

    check()


def test_null_profile_values_mean_their_defaults(tmp_path):
    text = GOOD.replace("seqlen: 128", "seqlen: null\n    batch_size: ~\n    max_windows:")
    prof = parse(_write(tmp_path, text)).profiles["cpu"]
    assert (prof.seqlen, prof.batch_size, prof.max_windows) == (2048, 1, None)

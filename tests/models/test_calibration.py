"""Calibration sources, deterministic order, hashes, AutoAWQ's sample selection, errors."""

from __future__ import annotations

import json

import pytest
from support import calibration_file, need_module, need_shared

from pplgate.errors import CalibrationError, VariantError
from pplgate.models.calibration import (
    CalibrationSpec,
    VariantCalibration,
    load_calibration,
    select_calibration,
    texts_sha256,
)


def test_shared_corpus_is_deterministic():
    p = calibration_file()
    a, b = load_calibration(str(p)), load_calibration(str(p))
    assert len(a) == 2923 and a.texts == b.texts and a.sha256 == b.sha256
    first = json.loads(p.open(encoding="utf-8").readline())["text"]
    assert a.texts[0] == first


def test_formats_and_hash(tmp_path):
    (tmp_path / "a.txt").write_text("one para\n\nsecond para\n\n\nthird")
    (tmp_path / "a.json").write_text(json.dumps(["one para", {"text": "second para"}, "third"]))
    (tmp_path / "a.jsonl").write_text('{"body": "one para"}\n\n{"body": "second para"}\n{"body": "third"}\n')
    t = load_calibration(str(tmp_path / "a.txt"))
    j = load_calibration(str(tmp_path / "a.json"))
    jl = load_calibration(str(tmp_path / "a.jsonl"), text_column="body")
    assert t.texts == j.texts == jl.texts == ("one para", "second para", "third")
    assert t.sha256 == j.sha256 == texts_sha256(["one para", "second para", "third"])
    assert texts_sha256(["ab", "c"]) != texts_sha256(["a", "bc"])  # boundaries count


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text('{"text": "  "}\n')
    with pytest.raises(CalibrationError, match="holds no text"):
        load_calibration(str(tmp_path / "empty.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"other": 1}\n')
    with pytest.raises(CalibrationError, match=r"bad.jsonl:1: expected .* 'text' field"):
        load_calibration(str(tmp_path / "bad.jsonl"))
    with pytest.raises(CalibrationError, match="expected hf:NAME"):
        load_calibration("hf:x")
    with pytest.raises(CalibrationError, match="unknown keys"):
        CalibrationSpec.from_param({"file": "x"})
    with pytest.raises(CalibrationError, match="n_samples must be a positive integer"):
        CalibrationSpec.from_param({"path": "x", "n_samples": 0})


def test_hub_unreachable_says_use_a_local_file(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CalibrationError, match="use a local file instead"):
        load_calibration("pileval")
    with pytest.raises(CalibrationError, match="use a local file instead"):
        load_calibration("hf:org/name:cfg:train:text")


def test_env_default(monkeypatch):
    p = calibration_file()
    monkeypatch.setenv("PPLGATE_CALIBRATION", str(p))
    assert CalibrationSpec.from_param(None).resolved_source() == str(p)
    assert load_calibration(None).sha256 == load_calibration(str(p)).sha256
    monkeypatch.delenv("PPLGATE_CALIBRATION")
    assert CalibrationSpec().resolved_source() == "pileval"


def test_select_follows_autoawq_rule():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(need_shared("tokenizers", "gpt2")))
    cal = load_calibration(str(calibration_file()))
    sel = select_calibration(cal, tok, n_samples=16, seqlen=64)
    assert len(sel) == 16 and all(len(tok.encode(t)) <= 64 for t in sel.texts)
    # the same texts AutoAWQ's own get_calib_dataset keeps
    import torch

    calib_data = need_module("awq.utils.calib_data", "pip install --no-deps autoawq==0.2.9")
    get_calib_dataset = calib_data.get_calib_dataset

    ours = torch.cat([torch.tensor([tok.encode(t)]) for t in sel.texts], dim=1)
    theirs = get_calib_dataset(list(cal.texts), tokenizer=tok, n_samples=16, max_seq_len=64)
    n = len(theirs) * 64
    assert torch.equal(torch.cat(theirs, dim=1)[0], ours[0, :n])
    assert sel.sha256 != cal.sha256 and select_calibration(cal, tok, 16, 64).sha256 == sel.sha256
    with pytest.raises(CalibrationError, match="fewer than one block"):
        select_calibration(cal, tok, n_samples=1, seqlen=2048)


def test_variant_calibration_reads_once_and_names_the_kind(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(need_shared("tokenizers", "gpt2")))
    corpus = tmp_path / "cal.jsonl"
    corpus.write_text(calibration_file().read_text())
    texts = VariantCalibration(CalibrationSpec(source=str(corpus), n_samples=16, seqlen=64), "gptq")
    first = texts.all()
    corpus.unlink()  # read once: a second call does not read the file again
    assert texts.all() is first and texts.selected(tok) == select_calibration(first, tok, 16, 64)
    assert VariantCalibration(None, "user").all() is None and VariantCalibration(None, "user").selected(tok) is None
    too_short = CalibrationSpec(source=str(calibration_file()), n_samples=1, seqlen=2048)
    with pytest.raises(VariantError, match=r"^gptq calibration: .*fewer than one block"):
        VariantCalibration(too_short, "gptq").selected(tok)
    with pytest.raises(VariantError, match=r"^awq calibration: "):
        VariantCalibration(CalibrationSpec(source=str(tmp_path / "missing.jsonl")), "awq").all()


def test_source_expands_environment_variables(tmp_path, monkeypatch):
    from pplgate.models.calibration import CalibrationSpec

    f = tmp_path / "cal.jsonl"
    f.write_text('{"text": "some calibration prose"}\n')
    monkeypatch.setenv("PPLGATE_TEST_CAL", str(f))
    assert CalibrationSpec.from_param({"source": "$PPLGATE_TEST_CAL"}).resolved_source() == str(f)
    monkeypatch.delenv("PPLGATE_TEST_CAL")
    with pytest.raises(CalibrationError, match="environment variable not set"):
        CalibrationSpec.from_param({"source": "$PPLGATE_TEST_CAL"}).resolved_source()


@pytest.mark.parametrize(
    ("body", "got"),
    [
        ('{"text": 5}\n', "'text': 5 (int)"),
        ('{"text": null}\n', "'text': None (NoneType)"),
        ('{"text": ["a"]}\n', "'text': ['a'] (list)"),
        ('"fine"\n[1, 2]\n', "a JSON list"),
        ('{"other": "x"}\n', "an object without it (keys: other)"),
    ],
)
def test_jsonl_record_that_is_not_text_names_the_line(tmp_path, body, got):
    f = tmp_path / "cal.jsonl"
    f.write_text('"first line is fine"\n' + body, encoding="utf-8")
    with pytest.raises(CalibrationError, match=r"cal.jsonl:\d: expected a JSON string or an object") as info:
        load_calibration(str(f))
    assert got in str(info.value)
    assert f"cal.jsonl:{2 + body.count(chr(10)) - 1}:" in str(info.value)


def test_json_list_item_that_is_not_text_names_the_item(tmp_path):
    f = tmp_path / "cal.json"
    f.write_text(json.dumps(["a", {"text": "b"}, {"body": "c"}, 7]), encoding="utf-8")
    with pytest.raises(CalibrationError, match=r"cal.json: item 2: .*without it \(keys: body\)"):
        load_calibration(str(f))
    f.write_text(json.dumps(["a", 7]), encoding="utf-8")
    with pytest.raises(CalibrationError, match=r"cal.json: item 1: .*got a JSON int"):
        load_calibration(str(f))
    (tmp_path / "bad.jsonl").write_text("{not json\n", encoding="utf-8")
    with pytest.raises(CalibrationError, match=r"bad.jsonl:1: not valid JSON"):
        load_calibration(str(tmp_path / "bad.jsonl"))


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ({"n_samples": "16"}, "param calibration.n_samples must be an integer, got '16' (str); write 16, not '16'"),
        ({"seqlen": True}, "param calibration.seqlen must be an integer, got True (bool)"),
        ({"seqlen": 512.0}, "write 512, not 512.0"),
        ({"path": 5}, "param calibration.path must be a string, got 5 (int); write it quoted, '5'"),
        ({"source": ["a"]}, "param calibration.source must be a string, got ['a'] (list)"),
        ({"text_column": 0}, "param calibration.text_column must be a string, got 0 (int)"),
    ],
)
def test_spec_types_are_strict(param, message):
    with pytest.raises(CalibrationError) as info:
        CalibrationSpec.from_param(param)
    assert message in str(info.value)
    assert CalibrationSpec.from_param({"source": None, "n_samples": 4}).n_samples == 4


def test_deeply_nested_json_is_a_calibration_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "deep.json").write_text(deep, encoding="utf-8")
    with pytest.raises(CalibrationError, match="cannot read calibration file"):
        load_calibration(str(tmp_path / "deep.json"))
    (tmp_path / "deep.jsonl").write_text('"ok"\n' + deep + "\n", encoding="utf-8")
    with pytest.raises(CalibrationError, match=r"deep.jsonl:2: not valid JSON"):
        load_calibration(str(tmp_path / "deep.jsonl"))

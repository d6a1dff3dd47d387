"""``pplgate report merge`` on hand-made report directories (no model): the coverage rules and the verdict.

The end-to-end cases (real shards, real updates) are in ``tests/pytest_plugin/test_shard.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pplgate.gate import merge


def _entry(model: str, shard: int, variant: str = "fp32") -> dict:
    return {
        "nodeid": f"baselines/{model}.yaml::{model}[cpu-{variant}]",
        "model": model,
        "file": f"baselines/{model}.yaml",
        "profile": "cpu",
        "variant": variant,
        "shard": shard,
    }


ENTRIES = [_entry("a", 1), _entry("b", 2), _entry("c", 2)]


def _shard(d: Path, k: int, n: int = 2, *, entries=ENTRIES, status="pass", exitstatus=0, records=None) -> Path:
    d.mkdir(parents=True)
    mine = [e for e in entries if e["shard"] == k]
    recs = records if records is not None else [{**e, "status": status, "ppl": 10.0} for e in mine]
    for r in recs:
        r.pop("shard", None)
    (d / "pplgate-results.json").write_text(json.dumps({"records": recs, "updates": [], "updates_blocked": None}))
    manifest = {"shard": f"{k}/{n}", "index": k, "count": n, "entries": entries, "exitstatus": exitstatus}
    (d / "pplgate-shard.json").write_text(json.dumps(manifest))
    return d


def _merge(*dirs: Path) -> merge.Merged:
    return merge.merge([merge.load(d) for d in merge.report_dirs(list(dirs))])


def test_complete_passing_shards_pass(tmp_path):
    m = _merge(_shard(tmp_path / "s1", 1), _shard(tmp_path / "s2", 2))
    assert m.passed and m.problems == [] and len(m.records) == 3
    assert m.verdict() == "**pplgate: PASSED** — 3 passed"


def test_a_shard_that_failed_outside_the_gate_fails_the_merge(tmp_path):
    m = _merge(_shard(tmp_path / "s1", 1, exitstatus=1), _shard(tmp_path / "s2", 2))
    assert not m.passed
    assert m.problems == [
        f"shard 1/2 ({tmp_path / 's1'}): pytest exited with status 1 although its gate entries passed"
    ]
    assert m.verdict() == "**pplgate: FAILED** — 3 passed, 1 coverage problem(s)"


def test_a_record_missing_from_its_shard_becomes_an_error_row(tmp_path):
    m = _merge(_shard(tmp_path / "s1", 1), _shard(tmp_path / "s2", 2, records=[{**ENTRIES[1], "status": "pass"}]))
    errors = [r for r in m.records if r["status"] == "error"]
    assert [r["nodeid"] for r in errors] == [ENTRIES[2]["nodeid"]]
    assert "shard 2/2 selected it, but its report has no record of it" in errors[0]["error"]
    assert not m.passed


def test_shards_that_disagree_on_n_or_on_the_entries(tmp_path):
    other = [_entry("a", 1), _entry("b", 1), _entry("c", 2)]
    m = _merge(_shard(tmp_path / "s1", 1), _shard(tmp_path / "s2", 2, n=3, entries=other))
    text = "\n".join(m.problems)
    assert "the shards disagree on N: [2, 3]" in text
    assert "selected other entries or split them otherwise" in text
    assert "shard 3/3: no report" in text


def test_unsharded_reports_merge_and_duplicates_fail(tmp_path):
    for name in ("x", "y"):
        d = tmp_path / name
        d.mkdir()
        rec = {"nodeid": "baselines/a.yaml::a[cpu-fp32]", "model": "a", "status": "pass", "ppl": 1.0}
        (d / "pplgate-results.json").write_text(json.dumps({"records": [rec]}))
    m = _merge(tmp_path / "x", tmp_path / "y")
    assert not m.passed and "reported 2 times" in m.problems[0]


def test_updates_are_refused_while_the_coverage_is_incomplete(tmp_path):
    m = _merge(_shard(tmp_path / "s1", 1))
    with pytest.raises(merge.MergeError, match="coverage is incomplete"):
        merge.apply_updates(m, tmp_path)


def test_unreadable_inputs_are_errors(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "pplgate-results.json").write_text("{not json")
    with pytest.raises(merge.MergeError, match="cannot read it as JSON"):
        merge.load(tmp_path / "bad")
    with pytest.raises(merge.MergeError, match="not a directory"):
        merge.report_dirs([tmp_path / "missing"])


# --------------------------------------------------------------------------- untrusted reports

UPDATE = {
    "profile": "cpu",
    "variant": "fp32",
    "fingerprint": {"n_windows": 1},
    "ppl": 10.0,
    "window_nlls": [2.302585],
    "provenance": {"date": "2026-01-01"},
}


def _report(d: Path, *, file="baselines/a.yaml", update=UPDATE, records=None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rec = {"nodeid": "baselines/a.yaml::a[cpu-fp32]", "file": file, "status": "updated", "update": update}
    (d / "pplgate-results.json").write_text(json.dumps({"records": [rec] if records is None else records}))
    return d


def _checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "baselines").mkdir(parents=True)
    (root / "baselines" / "a.yaml").write_text("schema_version: 1\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "ci.yaml").write_text("keep: me\n")
    return root


@pytest.mark.parametrize(
    "file, why",
    [
        ("../outside/ci.yaml", "is absolute or climbs with '..'"),
        ("baselines/../../outside/ci.yaml", "is absolute or climbs with '..'"),
        ("ABS", "is absolute or climbs with '..'"),
        ("baselines/link.yaml", "outside the baselines directory"),
        ("src/a.yaml", "outside the baselines directory"),
        ("baselines/sub", "is not a baseline file"),
        (None, "names no file"),
    ],
)
def test_an_update_for_a_file_outside_the_baselines_is_refused_before_any_write(tmp_path, file, why):
    root = _checkout(tmp_path)
    outside = tmp_path / "outside" / "ci.yaml"
    (root / "baselines" / "link.yaml").symlink_to(outside)
    (root / "baselines" / "sub").mkdir()
    file = str(outside) if file == "ABS" else file
    m = _merge(_report(tmp_path / "r", file=file))
    with pytest.raises(merge.MergeError, match=why) as exc:
        merge.apply_updates(m, root)
    assert "nothing was written" in str(exc.value) and "a[cpu-fp32]" in str(exc.value)
    assert outside.read_text() == "keep: me\n" and (root / "baselines" / "a.yaml").read_text() == "schema_version: 1\n"


@pytest.mark.parametrize(
    "change, why",
    [
        ({"variant": "x y/../z"}, "variant 'x y/../z' is not an entry name"),
        ({"profile": "../p"}, "profile '../p' is not an entry name"),
        ({"section": "../../x"}, "section '../../x' is not"),
        ({"ppl": "10"}, "ppl/window_nlls are not numbers"),
        ({"extra": 1}, "unknown field(s) ['extra']"),
    ],
)
def test_an_update_with_a_bad_field_is_refused(tmp_path, change, why):
    root = _checkout(tmp_path)
    m = _merge(_report(tmp_path / "r", update={**UPDATE, **change}))
    with pytest.raises(merge.MergeError, match=re.escape(why)):
        merge.apply_updates(m, root)
    assert (root / "baselines" / "a.yaml").read_text() == "schema_version: 1\n"


@pytest.mark.parametrize(
    "records, field",
    [
        ([1], "records[0] is not an object"),
        ([{"nodeid": 3, "status": "pass"}], "records[0].nodeid is not a non-empty string"),
        ([{"nodeid": "n", "status": "great"}], "records[0].status is 'great'"),
        ([{"nodeid": "n", "status": "pass", "file": ["x"]}], "records[0].file is not a string"),
        ([{"nodeid": "n", "status": "updated", "update": "x"}], "records[0].update is not an object"),
    ],
)
def test_malformed_records_name_the_report_and_the_field(tmp_path, records, field):
    d = _report(tmp_path / "r", records=records)
    with pytest.raises(merge.MergeError, match=re.escape(f"{d / 'pplgate-results.json'}: {field}")):
        merge.load(d)


def test_a_malformed_manifest_is_named(tmp_path):
    d = _shard(tmp_path / "s1", 1)
    (d / "pplgate-shard.json").write_text(json.dumps({"shard": "1/2", "index": "1", "count": 2, "entries": []}))
    with pytest.raises(merge.MergeError, match="index is not a positive integer"):
        merge.load(d)


def test_a_results_file_that_is_a_link_to_a_device_is_refused(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "pplgate-results.json").symlink_to("/dev/zero")
    with pytest.raises(merge.MergeError, match="not a regular file"):
        merge.load(d)


def test_zero_records_fail_the_merge(tmp_path):
    m = _merge(_report(tmp_path / "r", records=[]))
    assert not m.passed and "no gate record" in m.problems[0]


def test_out_may_not_overlap_an_input(tmp_path, capsys):
    from pplgate import report_cmd

    d = _report(tmp_path / "r")
    before = (d / "pplgate-results.json").read_text()
    for out in (d, d / "sub", tmp_path):
        assert report_cmd.main(["report", "merge", str(d), "--out", str(out)]) == 2
        assert "overlaps the input" in capsys.readouterr().err
    assert (d / "pplgate-results.json").read_text() == before


def test_a_write_that_fails_midway_leaves_every_file_as_it_was(tmp_path, monkeypatch):
    from pplgate.gate import store

    root = _checkout(tmp_path)
    (root / "baselines" / "b.yaml").write_text("schema_version: 1\n")
    real = store.atomic_write_text
    calls = []

    def second_fails(path, text):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(path, text)

    monkeypatch.setattr(store, "apply_updates", lambda path, text, updates: (text + "# new\n", []))
    monkeypatch.setattr(store, "atomic_write_text", second_fails)
    upd = merge.EntryUpdate.from_dict(UPDATE)
    with pytest.raises(OSError, match="No space left"):
        store.write_all({root / "baselines" / "a.yaml": [upd], root / "baselines" / "b.yaml": [upd]})
    assert (root / "baselines" / "a.yaml").read_text() == "schema_version: 1\n"  # restored
    assert (root / "baselines" / "b.yaml").read_text() == "schema_version: 1\n"

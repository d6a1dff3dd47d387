"""``pplgate report merge`` on hand-made report directories (no model): the coverage rules and the verdict.

The end-to-end cases (real shards, real updates) are in ``tests/pytest_plugin/test_shard.py``.
"""

from __future__ import annotations

import json
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

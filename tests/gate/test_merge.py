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
        ({"layers": {"mlp.down_proj": [0.1, -1]}}, "layers.mlp.down_proj[1] is -1, not a number >= 0"),
        ({"layers": [0.1]}, "layers is not an object"),
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


# --------------------------------------------------------------------------- optimistic concurrency (issue #24)

RECORDED = {"ppl": 9.0, "window_nlls": [2.197225], "provenance": {"date": "2026-01-01"}}
A_FILE = (
    "schema_version: 1\nprofiles:\n  cpu:\n    variants:\n      fp32:\n        kind: fp32\n"
    "        fingerprint: {n_windows: 1}\n"
    "        recorded: {ppl: 9.0, window_nlls: [2.197225], provenance: {date: '2026-01-01'}}\n"
)


def _updating_shard(d: Path, *, read_sha: str | None, replaces, commit=None, version="0.1.0") -> Path:
    """Shard 1/1 that re-recorded ``a``'s fp32 entry, having read ``baselines/a.yaml`` with ``read_sha``."""
    entry = _entry("a", 1)
    update = {**UPDATE, **({"replaces": replaces} if replaces is not ... else {})}
    _report(d, records=[{**{k: v for k, v in entry.items() if k != "shard"}, "status": "updated", "update": update}])
    manifest = {
        "shard": "1/1", "index": 1, "count": 1, "entries": [entry], "exitstatus": 0, "commit": commit,
        "pplgate_version": version, "baselines": {"baselines/a.yaml": read_sha} if read_sha else {},
    }  # fmt: skip
    (d / "pplgate-shard.json").write_text(json.dumps(manifest))
    return d


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_entry_re_recorded_after_the_shard_read_the_file_is_never_overwritten(tmp_path):
    root = tmp_path / "checkout"
    (root / "baselines").mkdir(parents=True)
    a = root / "baselines" / "a.yaml"
    a.write_text(A_FILE.replace("9.0", "9.5"))  # the shard read ppl 9.5; 9.0 was recorded since
    read = _sha(a)
    a.write_text(A_FILE)
    m = _merge(_updating_shard(tmp_path / "s", read_sha=read, replaces={**RECORDED, "ppl": 9.5}, commit="c0ffee"))
    with pytest.raises(merge.MergeError) as exc:
        merge.apply_updates(m, root)
    text = str(exc.value)
    assert text.startswith("baselines/a.yaml: entry profiles.cpu.variants.fp32 was re-recorded after shard 1/1")
    assert "its sha256 differs from the one in the manifest" in text and "nothing was written" in text
    assert text.endswith("re-run the shards on the current tree, or merge on c0ffee") and "\n" not in text
    assert a.read_text() == A_FILE


@pytest.mark.parametrize(
    "read, replaces, ok",
    [
        ("same", {"ppl": 1.0}, True),  # the file is what the shard read: nothing changed since
        ("other", RECORDED, True),  # another part of the file changed; this entry's block did not
        (None, RECORDED, True),  # no hash (an unsharded report): the block decides
        ("other", ..., False),  # an update that does not say what it replaces, into a changed file
        ("other", None, False),  # "a new entry", but the file holds one now
    ],
)
def test_the_replaced_block_decides_where_the_file_changed(tmp_path, read, replaces, ok):
    root = tmp_path / "checkout"
    (root / "baselines").mkdir(parents=True)
    a = root / "baselines" / "a.yaml"
    a.write_text(A_FILE)
    sha = {"same": _sha(a), "other": "0" * 64, None: None}[read]
    m = _merge(_updating_shard(tmp_path / "s", read_sha=sha, replaces=replaces))
    if ok:
        assert merge.queued_updates(m, root)[a][0].replaces == (None if replaces is ... else replaces)
    else:
        with pytest.raises(merge.MergeError, match=r"was re-recorded after shard 1/1 \(.*\) read the file"):
            merge.queued_updates(m, root)


def test_shards_that_disagree_on_commit_or_version_fail_the_merge(tmp_path):
    one = _updating_shard(tmp_path / "s1", read_sha=None, replaces=RECORDED, commit="a" * 40)
    two = _shard(tmp_path / "s2", 2, n=2, entries=[{**_entry("a", 1)}])
    m2 = json.loads((two / "pplgate-shard.json").read_text())
    (two / "pplgate-shard.json").write_text(json.dumps({**m2, "commit": "b" * 40, "pplgate_version": "0.0.9"}))
    text = "\n".join(merge.merge([merge.load(one), merge.load(two)]).problems)
    assert f"the shards ran on different commits (shard 1/1 ({one}): {'a' * 40}, shard 2/2 ({two}): {'b' * 40})" in text
    assert "the shards ran on different pplgate versions" in text and "re-run every shard on one commit" in text


@pytest.mark.parametrize(
    "change, field",
    [
        ({"commit": 7}, "commit is not a string"),
        ({"baselines": {"baselines/a.yaml": 1}}, "baselines is not an object of str values"),
        ({"fixture_tests": ["t"]}, "fixture_tests is not an object of int values"),
    ],
)
def test_a_manifest_with_a_bad_provenance_field_is_refused(tmp_path, change, field):
    d = _shard(tmp_path / "s1", 1)
    m = json.loads((d / "pplgate-shard.json").read_text())
    (d / "pplgate-shard.json").write_text(json.dumps({**m, **change}))
    with pytest.raises(merge.MergeError, match=re.escape(f"{d / 'pplgate-shard.json'}: {field}")):
        merge.load(d)


def test_an_update_whose_replaced_block_is_not_an_object_is_refused(tmp_path):
    root = _checkout(tmp_path)
    m = _merge(_report(tmp_path / "r", update={**UPDATE, "replaces": [1]}))
    with pytest.raises(merge.MergeError, match=re.escape("replaces is not an object")):
        merge.apply_updates(m, root)


def test_a_pass_that_cannot_be_judged_against_the_checkout_fails(tmp_path):
    m = merge.merge([merge.load(_shard(tmp_path / "s1", 1)), merge.load(_shard(tmp_path / "s2", 2))], tmp_path)
    assert not m.passed and {r["status"] for r in m.records} == {"fail"}
    assert m.notes[0].startswith("baselines/a.yaml::a[cpu-fp32]: marked pass by its shard, but baselines/a.yaml is ")
    assert "pass --rootdir, the checkout the shards ran on" in m.notes[0]


def _fixture_record(variant: str) -> dict:
    return {
        "nodeid": "tests/test_q.py::test_q",
        "file": "baselines/test_q.yaml",
        "profile": "tests",
        "variant": variant,
    }


def test_fixture_records_merge_like_collected_ones(tmp_path):
    fixture = {"tests/test_q.py::test_q": 2}
    dirs = []
    for k in (1, 2):
        mine = [{**e, "status": "pass"} for e in ENTRIES if e["shard"] == k]
        extra = [{**_fixture_record(v), "status": "pass"} for v in ("q-a", "q-b")] if k == 2 else []
        d = _shard(tmp_path / f"s{k}", k, records=mine + extra)
        m = json.loads((d / "pplgate-shard.json").read_text())
        (d / "pplgate-shard.json").write_text(json.dumps({**m, "fixture_tests": fixture}))
        dirs.append(d)
    m = _merge(*dirs)
    assert m.passed and m.problems == [] and len(m.records) == 5  # one test, two checks: two records
    # in the manifests but reported by the other shard, or twice
    data = json.loads((dirs[0] / "pplgate-results.json").read_text())
    data["records"].append({**_fixture_record("q-a"), "status": "pass"})
    (dirs[0] / "pplgate-results.json").write_text(json.dumps(data))
    text = "\n".join(_merge(*dirs).problems)
    assert "tests/test_q.py::test_q (check 'q-a'): reported 2 times" in text


def test_a_fixture_record_outside_every_manifest_is_named(tmp_path):
    d = _shard(tmp_path / "s1", 1, n=1, entries=[_entry("a", 1)], records=[{**_entry("a", 1), "status": "pass"}])
    data = json.loads((d / "pplgate-results.json").read_text())
    data["records"].append({**_fixture_record("q-a"), "status": "pass"})
    (d / "pplgate-results.json").write_text(json.dumps(data))
    assert _merge(d).problems == [
        "tests/test_q.py::test_q: reported by shard 1/1 (" + str(d) + ") but in no shard's manifest"
    ]

"""``--pplgate-shard K/N`` and ``pplgate report merge``: real pytest sessions (pytester) on a tiny seeded Llama.

Each "runner" is its own copy of a small project (4 baseline files, fp32 + rtn entries, 3 ordinary
test modules), as a CI matrix job would have its own checkout; the merge reads their report dirs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from support import FP32_ENTRY, gate_env, save_gate_model, tiny_baseline

from pplgate.cli import main as pplgate_main

pytest_plugins = ["pytester"]


# weights 2, 1, 2, 1 entries -> shards {alpha, beta} and {gamma, delta} (longest first, ties by name)
MODELS = {"alpha": True, "beta": False, "gamma": True, "delta": False}  # name: has an rtn entry
SHARD_OF = {"alpha": 1, "beta": 1, "gamma": 2, "delta": 2}
UNIT_TESTS = {"test_unit_a.py": 3, "test_unit_b.py": 2, "test_unit_c.py": 1}
ALL_ENTRIES = {
    f"baselines/{m}.yaml::{m}[cpu-{v}]" for m, rtn in MODELS.items() for v in (["fp32", "rtn"] if rtn else ["fp32"])
}


RTN_ENTRY = """rtn:
  kind: rtn
  params: {w_bit: 4, q_group_size: 32}
  tolerance:
    - {type: absolute, max_delta: 0.001}
    - {type: relational, ref: fp32, max_rel: 1.0}
"""


def baseline(name: str, model_dir: Path, rtn: bool) -> str:
    variants = FP32_ENTRY + (RTN_ENTRY if rtn else "")
    return tiny_baseline(model_dir, variants, name=name, comment=f"{name}: the tiny test model under another name")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_gate_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def make_project(root: Path, model_dir: Path) -> Path:
    """A checkout: pytest.ini, baselines/ (nothing recorded) and ordinary test modules."""
    (root / "baselines").mkdir(parents=True)
    (root / "pytest.ini").write_text("[pytest]\n")
    for name, rtn in MODELS.items():
        (root / "baselines" / f"{name}.yaml").write_text(baseline(name, model_dir, rtn))
    for mod, n in UNIT_TESTS.items():
        (root / mod).write_text("".join(f"def test_{i}():\n    pass\n\n\n" for i in range(n)))
    return root


PLUGIN = ("-p", "pplgate.plugin", "-p", "no:cacheprovider", "--import-mode=importlib")  # same module names per runner


def run(pytester: pytest.Pytester, root: Path, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*PLUGIN, "--rootdir", str(root), str(root), *args)


@pytest.fixture(scope="module")
def recorded(model_dir, tmp_path_factory) -> Path:
    """A project whose every entry was recorded by one real unsharded ``--update-baselines`` session."""
    root = make_project(tmp_path_factory.mktemp("recorded"), model_dir)
    rc = pytest.main([*PLUGIN, "-q", "--rootdir", str(root), str(root), "--update-baselines"])
    assert rc == 0
    return root


@pytest.fixture
def env(monkeypatch):
    gate_env(monkeypatch)


def runner(pytester: pytest.Pytester, name: str, source: Path) -> Path:
    root = pytester.path / name
    shutil.copytree(source, root)
    return root


def passed_ids(result: pytest.RunResult) -> set[str]:
    return {r.nodeid for r in result.reprec.getreports("pytest_runtest_logreport") if r.when == "call" and r.passed}


def manifest(report_dir: Path) -> dict:
    return json.loads((report_dir / "pplgate-shard.json").read_text())


def merge(*args: str) -> int:
    return pplgate_main(["report", "merge", *map(str, args)])


# --------------------------------------------------------------------------- the split


def test_shards_cover_every_entry_once_and_keep_a_model_together(pytester, env, recorded, capsys):
    ran: dict[int, set[str]] = {}
    for k in (1, 2):
        root = runner(pytester, f"r{k}", recorded)
        res = run(pytester, root, "--pplgate-shard", f"{k}/2", "--pplgate-report", str(root / "rep"))
        assert res.ret == 0
        ran[k] = passed_ids(res)
        m = manifest(root / "rep")
        assert m["shard"] == f"{k}/2" and m["exitstatus"] == 0
        assert {e["nodeid"] for e in m["entries"]} == ALL_ENTRIES
        assert m["entries_per_shard"] == [3, 3]
        assert f"pplgate shard {k}/2: 3 of 6 gate entries" in res.stdout.str()
    gate = {k: {i for i in ids if i.startswith("baselines/")} for k, ids in ran.items()}
    assert gate[1] | gate[2] == ALL_ENTRIES and not gate[1] & gate[2]  # every entry exactly once
    for k, ids in gate.items():
        assert {i.split("/")[1].split(".")[0] for i in ids} == {m for m, s in SHARD_OF.items() if s == k}
    units = {k: {i.split("::")[0].split("/")[-1] for i in ids if "test_unit" in i} for k, ids in ran.items()}
    assert units[1] | units[2] == set(UNIT_TESTS) and not units[1] & units[2]  # by module, each once
    assert sum(len([i for i in ids if "test_unit" in i]) for ids in ran.values()) == sum(UNIT_TESTS.values())
    reps = (pytester.path / "r1" / "rep", pytester.path / "r2" / "rep")
    assert merge(*reps, "--out", pytester.path / "merged", "--rootdir", pytester.path / "r1") == 0
    out = capsys.readouterr().out
    assert "pplgate: PASSED — 6 passed" in out
    data = json.loads((pytester.path / "merged" / "pplgate-results.json").read_text())
    assert {r["nodeid"] for r in data["records"]} == ALL_ENTRIES and data["merge"]["passed"] is True
    assert data["merge"]["problems"] == []
    md = (pytester.path / "merged" / "pplgate-summary.md").read_text()
    assert md.startswith("**pplgate: PASSED**") and "| `" in md and "| 1/2 | 3 |" in md


def test_assignment_does_not_depend_on_collection_order(pytester, env, recorded):
    root = runner(pytester, "r", recorded)
    files = sorted((root / "baselines").glob("*.yaml"))
    seen = []
    for order in (files, files[::-1]):
        rep = root / f"rep{len(seen)}"
        res = pytester.runpytest(
            *PLUGIN, "--rootdir", str(root), "--collect-only", "-q",
            "--pplgate-shard", "2/2", "--pplgate-report", str(rep), *map(str, order),
        )  # fmt: skip
        assert res.ret == 0
        seen.append({e["nodeid"]: e["shard"] for e in manifest(rep)["entries"]})
        assert sorted(ln for ln in res.stdout.lines if "::" in ln) == sorted(
            i for i in ALL_ENTRIES if SHARD_OF[i.split("/")[1].split(".")[0]] == 2
        )
    assert seen[0] == seen[1]


def test_more_shards_than_models_gives_an_empty_passing_shard(pytester, env, recorded):
    root = runner(pytester, "r", recorded)
    res = run(pytester, root, "--collect-only", "-q", "--pplgate-shard", "7/7", "--pplgate-report", str(root / "rep"))
    assert res.ret == 0
    assert "pplgate shard 7/7: 0 of 6 gate entries (model(s): none), 0 of 6 other tests" in res.stdout.str()
    assert manifest(root / "rep")["exitstatus"] == 0


@pytest.mark.parametrize("bad", ["3/2", "0/1", "x", "1-2"])
def test_a_malformed_shard_is_a_usage_error(pytester, env, recorded, bad):
    root = runner(pytester, "r", recorded)
    res = run(pytester, root, "--pplgate-shard", bad)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    err = res.stderr.str()
    assert "--pplgate-shard" in err and ("expected K/N" in err or "K must be between 1 and N" in err)


# --------------------------------------------------------------------------- the merge's verdict


def _regress(path: Path) -> None:
    """Shift the recorded fp32 ppl of a baseline file by 10% (window NLLs kept consistent)."""
    from ruamel.yaml import YAML

    y = YAML()
    data = y.load(path.read_text())
    rec = data["profiles"]["cpu"]["variants"]["fp32"]["recorded"]
    for i in range(len(rec["window_nlls"])):
        rec["window_nlls"][i] -= 0.1
    import math

    rec["ppl"] = round(math.exp(sum(rec["window_nlls"]) / len(rec["window_nlls"])), 6)
    with path.open("w") as fh:
        y.dump(data, fh)


def test_a_failing_shard_fails_the_merge_and_a_missing_or_doubled_shard_too(pytester, env, recorded, capsys):
    r1, r2 = runner(pytester, "r1", recorded), runner(pytester, "r2", recorded)
    _regress(r2 / "baselines" / "gamma.yaml")
    assert run(pytester, r1, "--pplgate-shard", "1/2", "--pplgate-report", str(r1 / "rep")).ret == 0
    res2 = run(pytester, r2, "--pplgate-shard", "2/2", "--pplgate-report", str(r2 / "rep"))
    assert res2.ret == 1
    capsys.readouterr()
    assert merge(r1 / "rep", r2 / "rep", "--out", pytester.path / "merged", "--rootdir", r1) == 1
    out = capsys.readouterr().out
    assert "pplgate: FAILED — 1 regression, 5 passed" in out
    md = (pytester.path / "merged" / "pplgate-summary.md").read_text()
    assert md.startswith("**pplgate: FAILED**") and "baselines/gamma.yaml::gamma[cpu-fp32]`: regression" in md
    # one shard's report only: the other shard's entries are errors, and the merge names the shard
    assert merge(r1 / "rep", "--rootdir", r1) == 1
    out = capsys.readouterr().out
    assert "shard 2/2: no report" in out and "no result: shard 2/2 did not report" in out
    assert "3 errors, 3 passed" in out
    # the same shard twice: every one of its entries is doubled
    shutil.copytree(r1 / "rep", pytester.path / "copy")
    assert merge(r1 / "rep", pytester.path / "copy", r2 / "rep", "--rootdir", r1) == 1
    out = capsys.readouterr().out
    assert "shard 1 was reported 2 times" in out and "reported 2 times (by shard 1/2" in out
    # a parent directory stands for the report dirs below it (as artifact downloads lay them out)
    arts = pytester.path / "artifacts"
    for k, r in ((1, r1), (2, r2)):
        shutil.copytree(r / "rep", arts / f"pplgate-shard-{k}")
    assert merge(arts, "--rootdir", r1) == 1 and "1 regression, 5 passed" in capsys.readouterr().out


def test_merge_of_nothing_is_an_error(pytester, capsys):
    (pytester.path / "empty").mkdir()
    assert merge(pytester.path / "empty") == 2
    assert "no pplgate-results.json or pplgate-shard.json" in capsys.readouterr().err


def test_the_merge_runs_without_torch(tmp_path):
    """A merge job needs no GPU and no torch: ``python -m pplgate.report_cmd report merge DIR...``."""
    import subprocess
    import sys

    code = (
        "import sys; from pplgate.report_cmd import main; rc = main(['report', 'merge', sys.argv[1]]); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr  # no report in an empty directory: exit 2, and torch was not imported
    assert "no pplgate-results.json or pplgate-shard.json" in res.stderr


# --------------------------------------------------------------------------- --update-baselines from shards


def test_update_from_shards_loses_no_entry(pytester, env, model_dir, capsys):
    fresh = make_project(pytester.path / "fresh", model_dir)  # nothing recorded yet
    runners = {k: runner(pytester, f"r{k}", fresh) for k in (1, 2)}
    for k, root in runners.items():
        res = run(
            pytester, root, "--pplgate-shard", f"{k}/2", "--update-baselines", "--pplgate-report", str(root / "rep")
        )
        assert res.ret == 0
        assert "3 created" in (root / "rep" / "pplgate-summary.md").read_text()
    merged_checkout = runner(pytester, "main", fresh)
    capsys.readouterr()
    rc = merge(*(r / "rep" for r in runners.values()), "--apply-updates", "--rootdir", merged_checkout)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count("pplgate merge: wrote baselines/") == 6
    for name, k in SHARD_OF.items():
        # the merged file is byte for byte the file its shard wrote on its own runner
        assert (merged_checkout / "baselines" / f"{name}.yaml").read_text() == (
            runners[k] / "baselines" / f"{name}.yaml"
        ).read_text()
        other = runners[3 - k] / "baselines" / f"{name}.yaml"
        assert other.read_text() == (fresh / "baselines" / f"{name}.yaml").read_text()  # not run there
        assert (merged_checkout / "baselines" / f"{name}.yaml").read_text().startswith(f"# {name}: the tiny")
    res = run(pytester, merged_checkout, "--pplgate-report", str(merged_checkout / "rep"))  # every entry recorded
    assert res.ret == 0
    records = json.loads((merged_checkout / "rep" / "pplgate-results.json").read_text())["records"]
    assert {r["nodeid"] for r in records} == ALL_ENTRIES and {r["status"] for r in records} == {"pass"}


def test_updates_are_not_applied_when_a_shard_is_missing(pytester, env, model_dir, capsys):
    fresh = make_project(pytester.path / "fresh", model_dir)
    r1 = runner(pytester, "r1", fresh)
    assert (
        run(pytester, r1, "--pplgate-shard", "1/2", "--update-baselines", "--pplgate-report", str(r1 / "rep")).ret == 0
    )
    target = runner(pytester, "main", fresh)
    capsys.readouterr()
    assert merge(r1 / "rep", "--apply-updates", "--rootdir", target) == 1
    assert "NOT applying the baseline updates" in capsys.readouterr().out
    for name in MODELS:
        assert (target / "baselines" / f"{name}.yaml").read_text() == (fresh / "baselines" / f"{name}.yaml").read_text()


# --------------------------------------------------------------------------- pytest-xdist inside a shard


def test_shard_under_xdist_writes_the_manifest_and_keeps_each_model_on_one_worker(pytester, env, recorded):
    pytest.importorskip("xdist")
    root = runner(pytester, "r", recorded)
    res = pytester.runpytest_subprocess(
        *PLUGIN, "--rootdir", str(root), str(root), "-v",
        "-n", "2", "--dist", "loadgroup", "--pplgate-shard", "2/2", "--pplgate-report", str(root / "rep"),
    )  # fmt: skip
    res.assert_outcomes(passed=3 + 3)  # gamma (2 entries), delta (1); test_unit_b (2 tests) + test_unit_c (1)
    m = manifest(root / "rep")
    assert m["shard"] == "2/2" and m["exitstatus"] == 0 and {e["nodeid"] for e in m["entries"]} == ALL_ENTRIES
    records = json.loads((root / "rep" / "pplgate-results.json").read_text())["records"]
    assert {Path(r["file"]).stem for r in records} == {"gamma", "delta"}
    assert {r["model"] for r in records} == {"tiny-llama"}  # the model column: the source's name (one rule)
    # loadgroup: a model's entries on one worker (pplgate's scheduler, also where xdist's
    # "@group" node id suffix is lost: pytest 9.2, pytest-dev/pytest-xdist#1386)
    ran = re.findall(r"\[(gw\d+)\].*?PASSED (\S*baselines/\S+?)(?:@\S+)?\s*$", res.stdout.str(), re.M)
    workers: dict[str, set[str]] = {}
    for worker, nodeid in ran:
        workers.setdefault(nodeid.split("::")[1].split("[")[0], set()).add(worker)
    assert set(workers) == {"gamma", "delta"} and all(len(w) == 1 for w in workers.values()), ran


@pytest.mark.parametrize(
    "nodeid,group",
    [
        ("baselines/m.yaml::m[cpu-fp32]", "m"),
        ("baselines/sub/x.YML::my-model[gpu-rtn-w4g128]", "my-model"),
        ("tests/test_a.py::test_b", None),
        ("baselines/m.yaml", None),
        ("tests/data.yaml::Class::test", None),
    ],
)
def test_gate_group_of_a_node_id(nodeid, group):
    from pplgate.pytest_plugin.xdist import gate_group

    assert gate_group(nodeid) == group


# --------------------------------------------------------------------------- optimistic concurrency (issue #24)


def _git_commit(root: Path) -> str:
    import subprocess

    def git(*args: str) -> str:
        env = {
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        }
        return subprocess.run(
            ["git", "-C", str(root), *args], check=True, capture_output=True, text=True, env={**os.environ, **env}
        ).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "baselines")
    return git("rev-parse", "HEAD")


def test_the_manifest_records_commit_version_and_the_baseline_files_read(pytester, env, recorded):
    import hashlib

    import pplgate

    root = runner(pytester, "r", recorded)
    head = _git_commit(root)
    assert (
        run(pytester, root, "--collect-only", "-q", "--pplgate-shard", "1/2", "--pplgate-report", str(root / "rep")).ret
        == 0
    )
    m = manifest(root / "rep")
    assert m["commit"] == head and m["pplgate_version"] == pplgate.__version__
    assert m["baselines"] == {
        f"baselines/{name}.yaml": hashlib.sha256((root / "baselines" / f"{name}.yaml").read_bytes()).hexdigest()
        for name in MODELS
    }
    outside = runner(pytester, "r0", recorded)  # no git repository around it
    assert (
        run(pytester, outside, "--collect-only", "--pplgate-shard", "1/2", "--pplgate-report", str(outside / "rep")).ret
        == 0
    )
    assert manifest(outside / "rep")["commit"] is None


def test_a_value_re_recorded_after_the_shards_ran_is_never_overwritten(pytester, env, recorded, capsys):
    runners = {k: runner(pytester, f"r{k}", recorded) for k in (1, 2)}
    for k, root in runners.items():
        res = run(
            pytester, root, "--pplgate-shard", f"{k}/2", "--update-baselines", "--pplgate-report", str(root / "rep")
        )
        assert res.ret == 0
    rec = json.loads((runners[1] / "rep" / "pplgate-results.json").read_text())["records"]
    alpha = next(r for r in rec if r["nodeid"].endswith("alpha[cpu-fp32]"))
    assert alpha["status"] == "updated" and alpha["update"]["replaces"]["ppl"] == alpha["baseline"]
    main = runner(pytester, "main", recorded)
    with (main / "baselines" / "gamma.yaml").open("a") as fh:
        fh.write("# a comment added after the shards ran: the file changed, its entries did not\n")
    _regress(main / "baselines" / "alpha.yaml")  # alpha fp32 re-recorded (by hand, or another merge) meanwhile
    before = {p.name: p.read_text() for p in (main / "baselines").glob("*.yaml")}
    capsys.readouterr()
    assert merge(*(r / "rep" for r in runners.values()), "--apply-updates", "--rootdir", main) == 2
    err = capsys.readouterr().err
    assert "baselines/alpha.yaml: entry profiles.cpu.variants.fp32 was re-recorded after shard 1/2" in err
    assert "re-run the shards on the current tree, or merge on the commit they ran on" in err
    assert {p.name: p.read_text() for p in (main / "baselines").glob("*.yaml")} == before  # nothing written
    shutil.copy(recorded / "baselines" / "alpha.yaml", main / "baselines" / "alpha.yaml")  # as the shards saw it
    assert merge(*(r / "rep" for r in runners.values()), "--apply-updates", "--rootdir", main) == 0
    assert (main / "baselines" / "gamma.yaml").read_text().endswith("the file changed, its entries did not\n")


def test_shards_on_other_commits_or_versions_are_refused(pytester, env, recorded, capsys):
    r1, r2 = runner(pytester, "r1", recorded), runner(pytester, "r2", recorded)
    for k, r in ((1, r1), (2, r2)):
        assert (
            run(pytester, r, "--pplgate-shard", f"{k}/2", "--update-baselines", "--pplgate-report", str(r / "rep")).ret
            == 0
        )
    m = manifest(r2 / "rep")
    (r2 / "rep" / "pplgate-shard.json").write_text(json.dumps({**m, "commit": "f" * 40, "pplgate_version": "9.9"}))
    main = runner(pytester, "main", recorded)
    capsys.readouterr()
    assert merge(r1 / "rep", r2 / "rep", "--apply-updates", "--rootdir", main) == 1
    out = capsys.readouterr().out
    assert f"the shards ran on different commits (shard 1/2 ({r1 / 'rep'}): none recorded, shard 2/2" in out
    assert "the shards ran on different pplgate versions" in out and "NOT applying the baseline updates" in out
    assert all(
        (main / "baselines" / f"{n}.yaml").read_text() == (recorded / "baselines" / f"{n}.yaml").read_text()
        for n in MODELS
    )


def test_a_pass_is_judged_again_against_the_current_rules(pytester, env, recorded, capsys):
    r1, r2 = runner(pytester, "r1", recorded), runner(pytester, "r2", recorded)
    for k, r in ((1, r1), (2, r2)):
        assert run(pytester, r, "--pplgate-shard", f"{k}/2", "--pplgate-report", str(r / "rep")).ret == 0
    main = runner(pytester, "main", recorded)
    _regress(main / "baselines" / "gamma.yaml")  # the recorded gamma fp32 moved since the shards ran
    capsys.readouterr()
    assert merge(r1 / "rep", r2 / "rep", "--rootdir", main, "--out", pytester.path / "m") == 1
    out = capsys.readouterr().out
    assert "baselines/gamma.yaml::gamma[cpu-fp32]: marked pass by its shard, but its numbers fail the rules of" in out
    assert "pplgate: FAILED — 1 regression, 5 passed" in out
    # a hostile report: a pass whose numbers do not pass
    path = r1 / "rep" / "pplgate-results.json"
    data = json.loads(path.read_text())
    rec = next(r for r in data["records"] if r["nodeid"].endswith("alpha[cpu-fp32]"))
    rec["ppl"], rec["window_nlls"] = rec["ppl"] * 2, [x + 0.7 for x in rec["window_nlls"]]
    path.write_text(json.dumps(data))
    assert merge(r1 / "rep", r2 / "rep", "--rootdir", recorded) == 1
    out = capsys.readouterr().out
    assert "alpha[cpu-fp32]: marked pass by its shard, but its numbers fail the rules of the current " in out
    assert "1 regression, 5 passed" in out


FIXTURE_TEST = """
def test_fix(ppl_model, ppl_regression):
    m = ppl_model({model!r}, "fp32")
    ppl_regression.check(m, name="fix-a", tolerance=0.001, seqlen=128, batch_size=2, max_windows=1)
    ppl_regression.check(m, name="fix-b", tolerance=0.001, seqlen=128, batch_size=2, max_windows=1)
"""


def test_fixture_records_merge_like_collected_ones(pytester, env, recorded, model_dir, capsys):
    base = runner(pytester, "base", recorded)
    (base / "test_fix.py").write_text(FIXTURE_TEST.format(model=str(model_dir)))
    assert pytest.main([*PLUGIN, "-q", "--rootdir", str(base), str(base / "test_fix.py"), "--update-baselines"]) == 0
    runners = {k: runner(pytester, f"r{k}", base) for k in (1, 2)}
    for k, root in runners.items():
        res = run(pytester, root, "--pplgate-shard", f"{k}/2", "--pplgate-report", str(root / "rep"))
        assert res.ret == 0
    fixture = {k: manifest(r / "rep")["fixture_tests"] for k, r in runners.items()}
    assert fixture[1] == fixture[2] and list(fixture[1]) == ["test_fix.py::test_fix"]
    assert "baselines/test_fix.yaml" in manifest(runners[1] / "rep")["baselines"]  # hashed at collection
    capsys.readouterr()
    assert merge(*(r / "rep" for r in runners.values()), "--rootdir", base) == 0
    assert "pplgate: PASSED — 8 passed" in capsys.readouterr().out
    for k, root in runners.items():  # re-recorded by the shards, written by the merge
        res = run(
            pytester, root, "--pplgate-shard", f"{k}/2", "--update-baselines", "--pplgate-report", str(root / "up")
        )
        assert res.ret == 0
    main = runner(pytester, "main", base)
    assert merge(*(r / "up" for r in runners.values()), "--apply-updates", "--rootdir", main) == 0
    assert capsys.readouterr().out.count("pplgate merge: wrote baselines/test_fix.yaml") == 2

"""Unit tests of the report writers (no model needed)."""

from __future__ import annotations

import json
import sys

import pytest

from pplgate.gate import reports
from pplgate.gate.record import GateRecord, Status
from pplgate.gate.stats import paired_stats

NODE = "baselines/m.yaml::m[cpu-fp32]"
RERUN = f'pytest --update-baselines "{NODE}"'


def _rec(status="fail", **kw):
    rec = {
        "nodeid": NODE,
        "file": "/repo/baselines/m.yaml",
        "model": "m",
        "profile": "cpu",
        "variant": "fp32",
        "status": status,
        "ppl": 10.5,
        "baseline": 10.0,
        "delta": 0.5,
        "rel_delta": 0.05,
        "tolerance": "±0.1",
        "wall_time_s": 1.0,
        "prepare_time_s": 0.5,
        "origin": "loaded",
        "window_nlls": [2.4, 2.3, 2.35],
        "baseline_window_nlls": [2.3, 2.3, 2.3],
        "rules": [{"text": "[FAIL] absolute: |ppl - recorded| <= 0.1: got +0.500000", "passed": False}],
        "paired": paired_stats([2.4, 2.3, 2.35], [2.3, 2.3, 2.3]).to_dict(),
        "hand_edited": False,
        "rerun": RERUN,
    }
    rec.update(kw)
    return rec


def test_terminal_and_markdown_tables():
    lines = reports.terminal_table([_rec(), _rec("pass", variant="fp16", partial=True)])
    assert lines[0].split() == reports.HEADER
    assert "FAIL" in lines[2] and "+0.5000" in lines[2] and "1.5s" in lines[2]
    assert "cpu-fp16 (partial)" in lines[3] and "PASS" in lines[3]
    md = reports.markdown([_rec()], [{"file": "m.yaml", "profile": "cpu", "variant": "fp32", "old": 1.0, "new": 2.0}])
    assert "| model | variant | ppl |" in md and "❌ FAIL" in md
    assert "| +0.5000 (+5.0000%) |" in md
    assert "95% CI [-0.074217, +0.174217] (too few windows to tell a shift from noise: score more" in md
    assert "m.yaml :: cpu/fp32: 1.000000 -> 2.000000  (+1.000000)" in md


def test_the_table_shows_the_seconds_of_each_phase_and_tokens_per_s():
    phases = {"load_s": 12.61, "prepare_s": 0.3, "tokenize_s": 1.04, "evaluate_s": 3.31}
    lines = reports.terminal_table([_rec("pass", phases=phases, tokens_per_s=2560.4), _rec("pass")])
    cells = dict(zip(reports.HEADER, lines[2].split(), strict=False))
    assert cells["time"] == "17.3s"  # every phase, the model's load included
    assert cells["load+prep+tok+eval"] == "12.6+0.3+1.0+3.3" and cells["tok/s"] == "2560"
    old = dict(zip(reports.HEADER, lines[3].split(), strict=False))  # a record from before phases existed
    assert old["time"] == "1.5s" and old["load+prep+tok+eval"] == "-" and old["tok/s"] == "-"
    md = reports.markdown([_rec("pass", phases=phases, tokens_per_s=2560.4)])
    assert "| 17.3s | 12.6+0.3+1.0+3.3 | 2560 | loaded |" in md
    rec = GateRecord.from_dict(_rec("pass", phases=phases, tokens_per_s=2560.4))
    assert rec.phases == phases and rec.to_dict()["tokens_per_s"] == 2560.4  # travels from xdist workers


def test_verdict_line():
    assert reports.verdict([_rec("pass")] * 3) == "**pplgate: PASSED** — 3 passed"
    assert reports.verdict([_rec("pass"), _rec(), _rec("pass")]) == "**pplgate: FAILED** — 1 regression, 2 passed"
    assert reports.verdict([_rec("created")], blocked="x") == "**pplgate: FAILED** — 1 created"
    assert reports.verdict([_rec("not_written"), _rec("skipped")]).startswith("**pplgate: FAILED** — 1 update not")


def test_markdown_tells_a_reviewer_what_to_do():
    drift_cmd = f'pytest --update-baselines --force-update "{NODE}"'
    records = [
        _rec(
            "fail",
            hand_edited=True,
            baseline_own_ppl=9.5,
            inconsistent=[
                "the recorded ppl 10.000000 does not match its own recorded window NLLs (exp(mean) = 9.500000)"
            ],
        ),
        _rec("improved", nodeid="m[cpu-better]", ppl=9.0, delta=-1.0, rel_delta=-0.1),
        _rec("drift", nodeid="m[cpu-drift]", paired=None, rules=None, drift=[["seqlen", 128, 256]], rerun=drift_cmd),
        _rec("missing", nodeid="m[cpu-new]", baseline=None, delta=None, rel_delta=None, paired=None, rules=None),
        _rec("error", nodeid="m[cpu-err]", ppl=None, error="VariantError: no kernel for\nw3 on cpu", rerun=None),
        _rec("skipped", nodeid="m[gpu-fp16]", ppl=None, skip_reason="gpu tier: no CUDA device available", rerun=None),
        _rec("pass", nodeid="m[cpu-ok]", rerun=None),
        _rec("not_written", nodeid="m[cpu-upd]", not_written="1 test(s) failed", rerun=None),
    ]
    md = reports.markdown(records, plots={NODE: "per-window ΔNLL plot: [x.png](x.png)"})
    first = md.splitlines()[0]
    assert first == (
        "**pplgate: FAILED** — 1 regression, 1 improvement outside tolerance, 1 protocol drift, "
        "1 missing baseline, 1 error, 1 update not written, 1 passed, 1 skipped"
    )
    assert f"#### ❌ `{NODE}`: regression" in md
    assert "- measured **10.500000** vs recorded 10.000000: Δ +0.500000 (+5.0000%)" in md
    assert "(too few windows to tell a shift from noise: score more (max_windows >= 8)); 2/3 windows worse" in md
    assert "does not match its own recorded window NLLs (exp(mean) = 9.500000): was the baseline file edited" in md
    assert md.count("edited by hand") == 1
    assert "#### ❗ `m[cpu-better]`: improvement outside tolerance" in md and "(-10.0000%)" in md
    assert "| ❗ IMPROVED |" in md
    assert f"```\n{RERUN}\n```" in md and f"```\n{drift_cmd}\n```" in md
    assert "- protocol drift `seqlen`: `128` → `256`" in md
    assert "- measured **10.500000**, nothing recorded" in md
    assert "```\nVariantError: no kernel for\nw3 on cpu\n```" in md
    assert "- `m[gpu-fp16]`: gpu tier: no CUDA device available" in md
    assert "| 🚫 NOT WRITTEN |" in md and "measured but **not written**: 1 test(s) failed" in md
    assert "[x.png](x.png)" in md
    assert "m[cpu-ok]`" not in md  # a pass needs no section


def test_write_reports_relative_paths_png_link_and_step_summary(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    summary = tmp_path / "step.md"
    summary.write_text("before\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    root = tmp_path / "repo"
    recs = [_rec(file=str(root / "baselines" / "m.yaml")), _rec("pass", variant="fp16", file=str(root / "b.yaml"))]
    rows = [{"file": str(root / "baselines" / "m.yaml"), "profile": "cpu", "variant": "x", "old": 1.0, "new": 2.0}]
    out = reports.write_reports(tmp_path / "out", recs, rows, rootdir=root)
    names = sorted(p.name for p in out.paths)
    assert names == ["baselines_m.yaml_m_cpu-fp32.png", "pplgate-results.json", "pplgate-summary.md"]
    assert out.notes == []
    data = json.loads((tmp_path / "out" / "pplgate-results.json").read_text())
    assert [r["status"] for r in data["records"]] == ["fail", "pass"]
    assert [r["file"] for r in data["records"]] == ["baselines/m.yaml", "b.yaml"]
    assert data["updates"][0]["file"] == "baselines/m.yaml"
    assert recs[0]["file"] == str(root / "baselines" / "m.yaml")  # the plugin's records are not changed
    assert (tmp_path / "out" / "baselines_m.yaml_m_cpu-fp32.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "out" / "pplgate-summary.md").read_text()
    assert "per-window ΔNLL plot: [baselines_m.yaml_m_cpu-fp32.png](baselines_m.yaml_m_cpu-fp32.png)" in md
    assert "- baselines/m.yaml :: cpu/x: 1.000000 -> 2.000000" in md and str(root) not in md
    assert summary.read_text().startswith("before\n**pplgate: FAILED** — 1 regression, 1 passed\n")


def test_rounding_noise_is_noise_in_the_plot_and_the_stats(tmp_path):
    now = [3.123456789, 2.987654321, 3.5000004, 3.1111115]
    stored = [round(x, 6) for x in now]  # what a baseline file keeps
    deltas = [a - b for a, b in zip(now, stored, strict=True)]
    assert all(0 < abs(d) < reports.ROUNDING_STEP for d in deltas)
    assert reports.classify_deltas(deltas) == [0, 0, 0, 0]
    stats = paired_stats(now, stored)
    assert (stats.n_worse, stats.n_better) == (0, 0)
    rec = _rec("updated", window_nlls=now, baseline_window_nlls=stored, paired=stats.to_dict())
    assert reports.plot_window_deltas(rec, tmp_path / "noise.png") is None  # no plot of rounding
    assert not (tmp_path / "noise.png").exists()
    out = reports.write_reports(
        tmp_path / "out", [rec, _rec("fail", nodeid="m[n]", window_nlls=now, baseline_window_nlls=stored)]
    )
    assert not list((tmp_path / "out").glob("*.png"))
    assert "every |Δ| ≤ 1e-06, the storage rounding (no plot)" in (tmp_path / "out" / "pplgate-summary.md").read_text()
    assert out.notes == []


def test_delta_classification_agrees_with_paired_stats():
    base = [2.0 + 0.01 * i for i in range(12)]
    step = reports.ROUNDING_STEP
    cur = [b + d for b, d in zip(base, [0.3, -0.2, 0.4 * step, -0.9 * step, 2 * step, -3 * step] * 2, strict=True)]
    kinds = reports.classify_deltas([a - b for a, b in zip(cur, base, strict=True)])
    stats = paired_stats(cur, base)
    assert (kinds.count(1), kinds.count(-1)) == (stats.n_worse, stats.n_better) == (4, 4)


def test_plot_marks_rounding_band(tmp_path):
    pytest.importorskip("matplotlib")
    rec = _rec(window_nlls=[2.4, 2.3 + 1e-7, 2.35], baseline_window_nlls=[2.3, 2.3, 2.3])
    assert reports.classify_deltas(reports.window_deltas(rec)) == [1, 0, 1]  # grey middle bar
    assert reports.plot_window_deltas(rec, tmp_path / "p.png") == tmp_path / "p.png"
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_matplotlib_missing_is_said_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    out = reports.write_reports(tmp_path / "out", [_rec(), _rec(nodeid="m[cpu-other]")])
    assert out.notes == [reports.MATPLOTLIB_MISSING]
    assert sorted(p.name for p in out.paths) == ["pplgate-results.json", "pplgate-summary.md"]
    md = (tmp_path / "out" / "pplgate-summary.md").read_text()
    assert md.count("PNG report skipped: matplotlib is not installed (pip install matplotlib, or pip install") == 1
    assert "pip install -e '.[report]')" in md


def test_junit_properties():
    props = dict(reports.junit_properties(_rec()))
    assert props == {
        "pplgate_ppl": "10.500000",
        "pplgate_baseline": "10.000000",
        "pplgate_delta": "+0.500000",
        "pplgate_tolerance": "±0.1",
        "pplgate_status": "fail",
    }


def test_relpath_outside_rootdir_and_none():
    assert reports.relpath("/a/b/c.yaml", "/a") == "b/c.yaml"
    assert reports.relpath("/a/b/c.yaml", None) == "/a/b/c.yaml"


def test_records_or_their_dicts_report_the_same(tmp_path):
    """The plugin hands GateRecords; JSON read back gives dicts: every report reads both alike."""
    dicts = [
        _rec(),
        _rec("pass", nodeid="m[cpu-ok]", rerun=None),
        _rec("skipped", nodeid="m[gpu-x]", ppl=None, skip_reason="no CUDA", rerun=None),
    ]
    recs = [GateRecord.from_dict(d) for d in dicts]
    assert recs[0].status is Status.FAIL and recs[0].paired.n == 3
    assert reports.terminal_table(recs) == reports.terminal_table(dicts)
    assert reports.markdown(recs) == reports.markdown(dicts)
    assert reports.verdict(recs) == reports.verdict(dicts) == "**pplgate: FAILED** — 1 regression, 1 passed, 1 skipped"
    assert reports.junit_properties(recs[0]) == reports.junit_properties(dicts[0])
    assert dict(reports.junit_properties(recs[0]))["pplgate_status"] == "fail"
    out = reports.write_reports(tmp_path / "a", recs)
    assert json.loads((tmp_path / "a" / "pplgate-results.json").read_text())["records"] == [r.to_dict() for r in recs]
    assert [p.name for p in out.paths][:2] == ["pplgate-results.json", "pplgate-summary.md"]


def test_status_tables_cover_every_status_and_read_plain_strings():
    for table in (reports.STATUS_MARK, reports.MD_MARK, reports.STATUS_WORDS):
        assert set(table) == set(Status)
        assert all(table[s.value] == table[s] for s in Status)  # "fail" finds Status.FAIL's entry
    row = reports.terminal_table([_rec("not_written")])[2]
    assert "NOT WRITTEN" in row
    assert "weird" in reports.terminal_table([_rec("weird")])[2]  # an unknown status is shown as it is
    assert reports.verdict([_rec("weird")]) == "**pplgate: FAILED** — 1 other"
    assert reports.verdict([]) == "**pplgate: PASSED** — no gate tests"


def test_update_table_marks_entries_that_vanished():
    rows = [
        {"file": "/r/b/m.yaml", "profile": "cpu", "variant": "a", "old": None, "new": 2.5},
        {"file": "/r/b/m.yaml", "profile": "cpu", "variant": "b", "old": 2.0, "new": 2.5, "applied": False},
    ]
    assert reports.update_table(rows, "/r") == [
        "b/m.yaml :: cpu/a: (new) -> 2.500000",
        "b/m.yaml :: cpu/b: 2.000000 -> 2.500000  (+0.500000)  [entry no longer in the file: skipped]",
    ]


def test_an_overflowed_or_inconsistent_record_reports_without_raising(tmp_path):
    """inf/nan numbers (a mean NLL above ~709.78 nats) print as inf/nan in every report; nothing raises."""
    inf, nan = float("inf"), float("nan")
    over = _rec(ppl=inf, delta=inf, rel_delta=nan, baseline=inf, window_nlls=[800.0, 810.0, 805.0], paired=None)
    bad = _rec(
        "inconsistent",
        nodeid="m[cpu-edited]",
        inconsistent=["the recorded window_nlls hold 2 values, but fingerprint.n_windows is 3"],
        paired=None,
    )
    lines = reports.terminal_table([over, bad])
    assert "inf" in lines[2] and "INCONSISTENT" in lines[3]
    md = reports.markdown([over, bad])
    assert md.startswith("**pplgate: FAILED** — 1 regression, 1 inconsistent baseline\n")
    assert "- measured **inf** vs recorded inf" in md
    assert "#### 🧩 `m[cpu-edited]`: inconsistent baseline" in md
    assert "- ⚠️ the recorded window_nlls hold 2 values, but fingerprint.n_windows is 3: was the baseline file " in md
    assert ("pplgate_ppl", "inf") in reports.junit_properties(over)
    written = reports.write_reports(tmp_path / "rep", [over, bad])
    strict = json.loads(
        (tmp_path / "rep" / "pplgate-results.json").read_text(), parse_constant=lambda c: pytest.fail(f"JSON has {c}")
    )
    assert strict["records"][0]["ppl"] == "inf" and strict["records"][0]["rel_delta"] == "nan" and written.paths


def test_long_test_ids_give_bounded_distinct_file_names():
    a, b = (
        "baselines/m.yaml::m[" + "p" * 100 + "-" + "v" * 99 + "a]",
        "baselines/m.yaml::m[" + "p" * 100 + "-" + "v" * 99 + "b]",
    )
    assert len(reports._slug(a)) == 120 and reports._slug(a) != reports._slug(b)
    assert reports._slug(NODE) == "baselines_m.yaml_m_cpu-fp32"


def test_window_ticks_are_integers(tmp_path, monkeypatch):
    """Three windows: matplotlib's default locator puts ticks at 0.5 steps; a window number is an integer."""
    plt = pytest.importorskip("matplotlib.pyplot")
    figures = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), real_close(fig)))
    assert reports.plot_window_deltas(_rec(), tmp_path / "p.png") == tmp_path / "p.png"
    ticks = list(figures[0].axes[0].get_xticks())
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


@pytest.mark.parametrize(
    ("url", "link"),
    [
        (None, "per-window ΔNLL plot: [{png}]({png})"),
        ("https://example.org/run/7/", "per-window ΔNLL plot: ![{png}](https://example.org/run/7/{png})"),
        (
            "https://github.com/o/r/blob/pplgate-report-images/7/{{name}}?raw=true",
            "per-window ΔNLL plot: ![{png}](https://github.com/o/r/blob/pplgate-report-images/7/{png}?raw=true)",
        ),
    ],
)
def test_report_images_render_from_the_url_the_workflow_gives(tmp_path, monkeypatch, url, link):
    """``$PPLGATE_REPORT_URL`` (where the workflow serves the report's files) makes the PNG an inline image of the
    Markdown (a pull-request comment, the step summary); without it, a link relative to the report folder."""
    pytest.importorskip("matplotlib")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    if url is None:
        monkeypatch.delenv("PPLGATE_REPORT_URL", raising=False)
    else:
        monkeypatch.setenv("PPLGATE_REPORT_URL", url.replace("{{name}}", "{name}"))
    reports.write_reports(tmp_path / "out", [_rec()])
    md = (tmp_path / "out" / "pplgate-summary.md").read_text()
    assert f"- {link.format(png='baselines_m.yaml_m_cpu-fp32.png')}" in md.splitlines()

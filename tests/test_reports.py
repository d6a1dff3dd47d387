"""Unit tests of the report writers (no model needed)."""

from __future__ import annotations

import json

from pplgate import reports


def _rec(status="fail", **kw):
    rec = {
        "nodeid": "baselines/m.yaml::m[cpu-fp32]",
        "model": "m",
        "profile": "cpu",
        "variant": "fp32",
        "status": status,
        "ppl": 10.5,
        "baseline": 10.0,
        "delta": 0.5,
        "tolerance": "±0.1",
        "wall_time_s": 1.0,
        "prepare_time_s": 0.5,
        "origin": "loaded",
        "window_nlls": [2.4, 2.3, 2.35],
        "baseline_window_nlls": [2.3, 2.3, 2.3],
        "rules": [{"text": "[FAIL] absolute: |ppl - recorded| <= 0.1: got +0.500000", "passed": False}],
        "paired": {"mean": 0.05, "ci_low": -0.07, "ci_high": 0.17, "n_worse": 2, "n": 3},
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
    assert "95% CI [-0.070000, +0.170000], 2/3 windows worse" in md
    assert "m.yaml :: cpu/fp32: 1.000000 -> 2.000000  (+1.000000)" in md


def test_write_reports_and_step_summary(tmp_path, monkeypatch):
    summary = tmp_path / "step.md"
    summary.write_text("before\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    paths = reports.write_reports(tmp_path / "out", [_rec(), _rec("pass", variant="fp16")])
    names = sorted(p.name for p in paths)
    assert names == ["baselines_m.yaml_m_cpu-fp32.png", "pplgate-results.json", "pplgate-summary.md"]
    data = json.loads((tmp_path / "out" / "pplgate-results.json").read_text())
    assert [r["status"] for r in data["records"]] == ["fail", "pass"]
    assert (tmp_path / "out" / "baselines_m.yaml_m_cpu-fp32.png").read_bytes()[:4] == b"\x89PNG"
    assert summary.read_text().startswith("before\n### pplgate")


def test_junit_properties():
    props = dict(reports.junit_properties(_rec()))
    assert props == {
        "pplgate_ppl": "10.500000",
        "pplgate_baseline": "10.000000",
        "pplgate_delta": "+0.500000",
        "pplgate_tolerance": "±0.1",
        "pplgate_status": "fail",
    }

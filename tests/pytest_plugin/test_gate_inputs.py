"""Gate entries without data: real pytest sessions (pytester) where no copy of WikiText-2 can be found.

Outside CI the entries skip with the reason; under CI (``$CI`` / ``PPLGATE_REQUIRE_SHARED=1``) they fail
with it; a dataset that is there but wrong still fails. The dataset is looked up before any model loads:
the baseline's model directory is empty, so loading it would be an error of its own.
"""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest
from support import write_jsonl

pytest_plugins = ["pytester"]

ENV_VARS = ("PPLGATE_WIKITEXT", "CI", "PPLGATE_REQUIRE_SHARED", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@pytest.fixture
def no_data_gate(pytester: pytest.Pytester, monkeypatch, tmp_path: Path) -> pytest.Pytester:
    """A session with one baseline file (two CPU entries), no shared folder and a hub that refuses connections."""
    for var in (*ENV_VARS, "TRANSFORMERS_OFFLINE", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PPLGATE_SHARED", str(tmp_path / "no-shared"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{s.getsockname()[1]}")
    model_dir = tmp_path / "empty-model"
    model_dir.mkdir()
    pytester.makeini("[pytest]\n")
    (pytester.path / "baselines").mkdir()
    (pytester.path / "baselines" / "tiny.yaml").write_text(
        textwrap.dedent(
            f"""\
            schema_version: 1
            model:
              name: tiny
              source: {model_dir}
            profiles:
              cpu:
                marker: smoke
                device: cpu
                seqlen: 128
                max_windows: 2
                variants:
                  fp32:
                    kind: fp32
                    tolerance:
                      - {{type: absolute, max_delta: 0.001}}
                  bf16:
                    kind: bf16
                    tolerance:
                      - {{type: absolute, max_delta: 0.01}}
            """
        )
    )
    return pytester


def test_entries_skip_without_data_outside_ci_and_the_session_is_not_green(no_data_gate: pytest.Pytester) -> None:
    result = no_data_gate.runpytest("baselines", "-rs")
    result.assert_outcomes(skipped=2)
    out = result.stdout.str()
    assert "the WikiText-2 test split is not available here" in out
    assert "pass --pplgate-dataset PATH" in out and "test-00000-of-00001.parquet" in out
    assert "cannot load model" not in out
    # nothing was measured for want of data: a failed session with the fix, CI or not
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "every gate entry was skipped for want of the dataset (`pplgate data`)" in out


@pytest.mark.parametrize("ci_var", [("CI", "true"), ("PPLGATE_REQUIRE_SHARED", "1")], ids=["CI", "REQUIRE_SHARED"])
def test_entries_fail_without_data_under_ci(no_data_gate: pytest.Pytester, monkeypatch, ci_var) -> None:
    monkeypatch.setenv(*ci_var)
    result = no_data_gate.runpytest("baselines")
    result.assert_outcomes(failed=2)  # failures of the call, not setup errors, and no skip
    out = result.stdout.str()
    assert "DatasetNotFound" in out and "pass --pplgate-dataset PATH" in out
    assert "a missing dataset fails; outside CI these entries skip" in out
    assert "cannot load model" not in out


def test_a_wrong_dataset_fails_even_outside_ci(no_data_gate: pytest.Pytester, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "not-wikitext.jsonl", ["not the test split\n"])
    result = no_data_gate.runpytest("baselines", f"--pplgate-dataset={data}")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "dataset hash mismatch" in out and "(from --pplgate-dataset)" not in out
    assert "cannot load model" not in out
    assert "--allow-noncanonical to measure anyway" not in out  # the plugin has no such option
    assert "Point --pplgate-dataset (or $PPLGATE_WIKITEXT) at an unmodified copy of the wikitext-2-raw-v1 test" in out
    assert "the gate measures only the canonical text" in out

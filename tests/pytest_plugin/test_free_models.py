"""Models are freed between a gate's models, and not after the process's last test (nothing needs the memory)."""

from __future__ import annotations

import json
import shutil

from support import GATE_ARGS, gate_project, save_gate_model, tiny_baseline

pytest_plugins = ["pytester"]

CONFTEST = """
import json, os, pathlib

import pytest

from pplgate.pytest_plugin.items import gate_of


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):  # after pplgate's teardown (trylast, registered earlier)
    loaded = sorted(pathlib.Path(k[0].path_or_id).name for k in gate_of(item.config).measurer.inputs._models)
    with open(os.environ["PPLGATE_TEST_OUT"], "a") as fh:
        fh.write(json.dumps([item.name, loaded]) + "\\n")
"""


def test_models_are_freed_between_models_but_not_after_the_last_test(pytester, monkeypatch, tmp_path):
    gate_project(pytester, monkeypatch, CONFTEST)
    model = save_gate_model(tmp_path / "m-a")
    shutil.copytree(model, tmp_path / "m-b")
    (pytester.path / "baselines").mkdir()
    for name in ("m-a", "m-b"):
        (pytester.path / "baselines" / f"{name}.yaml").write_text(
            tiny_baseline(tmp_path / name, name=name, max_windows=1)
        )
    out = tmp_path / "loaded.jsonl"
    monkeypatch.setenv("PPLGATE_TEST_OUT", str(out))
    result = pytester.runpytest_subprocess(*GATE_ARGS, "--update-baselines")
    result.assert_outcomes(passed=2)
    seen = [json.loads(line) for line in out.read_text().splitlines()]
    assert seen == [["m-a[cpu-fp32]", []], ["m-b[cpu-fp32]", ["m-b"]]]

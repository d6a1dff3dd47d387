"""One pytest-xdist worker per GPU: real xdist sessions with a simulated GPU list (CUDA_VISIBLE_DEVICES)."""

from __future__ import annotations

import json

from support import need_module

need_module("xdist", "pip install pytest-xdist", allow_module_level=True)
pytest_plugins = ["pytester"]

RECORDER = """
import json, os, pathlib

def pytest_configure(config):  # runs after pplgate's (tryfirst) configure in every worker
    wi = getattr(config, "workerinput", None)
    if wi:
        out = pathlib.Path(os.environ["PPLGATE_TEST_OUT"]) / f"{wi['workerid']}.json"
        out.write_text(json.dumps(os.environ.get("CUDA_VISIBLE_DEVICES")))
"""


def _run(pytester, monkeypatch, visible, *args):
    out = pytester.mkdir("out")
    monkeypatch.setenv("PPLGATE_TEST_OUT", str(out))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    pytester.makeconftest(RECORDER)
    pytester.makepyfile(test_a="def test_a(): pass\n\ndef test_b(): pass\n")
    result = pytester.runpytest_subprocess("-p", "pplgate.plugin", "-p", "no:cacheprovider", *args)
    seen = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    return result, seen


def test_each_worker_keeps_its_own_gpu(pytester, monkeypatch):
    result, seen = _run(pytester, monkeypatch, "3,7", "-n", "2", "--dist", "loadgroup")
    result.assert_outcomes(passed=2)
    assert seen == {"gw0": "3", "gw1": "7"}


def test_gpus_per_worker_slices(pytester, monkeypatch):
    result, seen = _run(pytester, monkeypatch, "0,1,2,3", "-n", "2", "--pplgate-gpus-per-worker", "2")
    result.assert_outcomes(passed=2)
    assert seen == {"gw0": "0,1", "gw1": "2,3"}


def test_too_many_workers_for_the_gpus_fails_with_the_fix(pytester, monkeypatch):
    result, _ = _run(pytester, monkeypatch, "0,1", "-n", "3")
    assert result.ret != 0
    out = result.stdout.str() + result.stderr.str()
    assert "need 3 GPUs, but only 2 are visible" in out and "use -n 2" in out


EXIT_RECORDER = """
import atexit, gc, os, pathlib, sys

def _who():
    return os.environ.get("PYTEST_XDIST_WORKER", "main")

FROZEN_AT_IMPORT = gc.get_freeze_count()  # another plugin may have frozen objects already


def _at_exit():  # registered before pplgate's configure: runs after pplgate's own exit handler
    out = pathlib.Path(os.environ["PPLGATE_TEST_OUT"])
    frozen_by_now = gc.get_freeze_count() - FROZEN_AT_IMPORT
    (out / f"{_who()}.exit").write_text(f"{frozen_by_now} {'torch' in sys.modules}")

atexit.register(_at_exit)
"""


def test_workers_freeze_their_objects_at_exit_and_the_controller_imports_no_torch(pytester, monkeypatch):
    """A worker's exit skips the full collections over its objects (the controller waits for it); the
    controller lists GPUs from CUDA_VISIBLE_DEVICES without importing torch (it delayed every worker)."""
    out = pytester.mkdir("out")
    monkeypatch.setenv("PPLGATE_TEST_OUT", str(out))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,7")
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)  # this test itself may run on an xdist worker
    pytester.makeconftest(EXIT_RECORDER)
    pytester.makepyfile(test_a="def test_a(): pass\n\ndef test_b(): pass\n")
    result = pytester.runpytest_subprocess("-p", "pplgate.plugin", "-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=2)
    seen = {p.stem: p.read_text().split() for p in out.glob("*.exit")}
    assert set(seen) == {"main", "gw0", "gw1"}
    assert int(seen["gw0"][0]) > 0 and int(seen["gw1"][0]) > 0  # objects frozen in the workers at exit
    assert seen["main"] == ["0", "False"]  # the controller: nothing frozen by pplgate, torch never imported

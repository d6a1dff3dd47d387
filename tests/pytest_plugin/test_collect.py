"""Collection and option checks of the plugin: real pytest sessions (pytester), no model is loaded."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ENTRY = """\
schema_version: 1
model:
  name: {name}
  source: org/not-downloaded   # a hub id: collection does not load it
profiles:
  {profile}:
    device: cpu
    variants:
      {variant}:
        kind: fp32
        tolerance:
          - {{type: absolute, max_delta: 0.001}}
"""


def _write(path: Path, name: str = "m", profile: str = "cpu", variant: str = "fp32") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ENTRY.format(name=name, profile=profile, variant=variant))
    return path


@pytest.fixture
def gate(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\n")
    (pytester.path / "baselines").mkdir()
    return pytester


def test_subdirectories_upper_case_suffix_and_outside_symlinks_are_collected(gate):
    b = gate.path / "baselines"
    _write(b / "top.yaml", name="top")
    _write(b / "team" / "nested.yaml", name="nested")
    _write(b / "LOUD.YAML", name="loud")
    _write(b / "short.yml", name="short")
    outside = _write(gate.path / "elsewhere" / "linked.yaml", name="linked")
    (b / "linked.yaml").symlink_to(outside)
    _write(gate.path / "not-baselines" / "other.yaml", name="other")  # outside baselines/: not a gate file
    res = gate.runpytest("--collect-only", "-q", "baselines")
    res.stdout.fnmatch_lines_random(
        [
            "baselines/top.yaml::top[[]cpu-fp32[]]",
            "baselines/team/nested.yaml::nested[[]cpu-fp32[]]",
            "baselines/LOUD.YAML::loud[[]cpu-fp32[]]",
            "baselines/short.yml::short[[]cpu-fp32[]]",
            "baselines/linked.yaml::linked[[]cpu-fp32[]]",
            "*5 tests collected*",
        ]
    )
    assert "other" not in res.stdout.str()


def test_a_symlink_beside_its_target_is_collected_once(gate):
    b = gate.path / "baselines"
    _write(b / "a.yaml", name="a")
    (b / "b.yaml").symlink_to(b / "a.yaml")
    res = gate.runpytest("--collect-only", "-q", "baselines")
    res.stdout.fnmatch_lines(["baselines/a.yaml::a[[]cpu-fp32[]]", "*1 test collected*"])
    assert "b.yaml" not in res.stdout.str()


def test_two_entries_with_one_test_id_are_a_collection_error(gate):
    text = textwrap.dedent(
        """\
        schema_version: 1
        model: {name: m, source: org/x}
        profiles:
          cpu:
            device: cpu
            variants:
              a-b:
                kind: fp32
                tolerance: [{type: absolute, max_delta: 0.001}]
          cpu-a:
            device: cpu
            variants:
              b:
                kind: fp32
                tolerance: [{type: absolute, max_delta: 0.001}]
        """
    )
    (gate.path / "baselines" / "dup.yaml").write_text(text)
    res = gate.runpytest("--collect-only", "-q", "baselines")
    res.stdout.fnmatch_lines(
        ["*dup.yaml:13: profiles.cpu-a.variants.b: test id m[[]cpu-a-b[]] is also the id of profiles.cpu.variants.a-b*"]
    )
    assert res.ret != 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pplgate-max-windows", "0"], "--pplgate-max-windows must be >= 1 (the number of windows to score), got 0"),
        (["--pplgate-max-windows", "-1"], "--pplgate-max-windows must be >= 1*got -1"),
        (["--pplgate-device", "banana"], "--pplgate-device 'banana': expected cpu, cuda or cuda:N"),
        (["--pplgate-device", "cuda:x"], "--pplgate-device 'cuda:x': expected cpu, cuda or cuda:N"),
        (["--pplgate-gpus-per-worker", "0"], "--pplgate-gpus-per-worker must be >= 1, got 0"),
    ],
)
def test_bad_option_values_are_one_usage_error(gate, args, message):
    _write(gate.path / "baselines" / "m.yaml")
    res = gate.runpytest(*args, "baselines")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*{message}*"])
    assert "Traceback" not in res.stdout.str() + res.stderr.str()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_explicit_cuda_without_cuda_is_an_error_not_a_green_skip(gate):
    _write(gate.path / "baselines" / "m.yaml")
    res = gate.runpytest("--pplgate-device", "cuda", "baselines")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--pplgate-device cuda was asked for, but torch sees no CUDA device here*"])


def test_cache_dir_that_is_a_file_or_cannot_be_created(gate, monkeypatch):
    _write(gate.path / "baselines" / "m.yaml")
    afile = gate.path / "afile"
    afile.write_text("x")
    res = gate.runpytest("--pplgate-cache-dir", str(afile), "baselines")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*--pplgate-cache-dir {afile}: not a directory (it is a file)*"])
    monkeypatch.setenv("PPLGATE_CACHE_DIR", str(afile / "sub"))
    res = gate.runpytest("baselines")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*$PPLGATE_CACHE_DIR {afile / 'sub'}: cannot create the cache directory*"])


def test_a_report_dir_that_cannot_be_one_is_a_usage_error_before_measuring(gate):
    _write(gate.path / "baselines" / "m.yaml")
    afile = gate.path / "afile"
    afile.write_text("x")
    for where, message in (
        (afile, "not a directory (it is a file)"),
        (afile / "sub", f"cannot be created, {afile} is a file"),
    ):
        res = gate.runpytest("--pplgate-report", str(where), "baselines")
        assert res.ret == pytest.ExitCode.USAGE_ERROR
        res.stderr.fnmatch_lines([f"*--pplgate-report {where}: {message}*"])
    res = gate.runpytest("--pplgate-report", str(gate.path / "new" / "dir"), "--collect-only", "baselines")
    assert res.ret == pytest.ExitCode.OK and not (gate.path / "new").exists()  # created only when written

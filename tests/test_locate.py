"""pplgate.locate: one lookup order for the offline inputs (option, variable, shared folder, hub),
the checkout found from the working directory and from the package, CI detection and the calibration
corpus behind ``$PPLGATE_CALIBRATION``."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import env_cleared, need_shared, write_jsonl

import pplgate
from pplgate.errors import CalibrationError
from pplgate.locate import (
    CALIBRATION_ENV,
    DATA_DIR_ENV,
    DATA_STEP,
    REQUIRE_ENV,
    SHARED_ENV,
    WIKITEXT_ENV,
    cwd_checkout,
    data_dir,
    find_calibration,
    find_shared,
    find_wikitext,
    hub_unreachable,
    inputs_required,
    lookup_steps,
    package_checkout,
    shared_candidates,
)
from pplgate.models.calibration import CalibrationSpec, load_calibration

_no_env = env_cleared(SHARED_ENV, WIKITEXT_ENV, CALIBRATION_ENV, REQUIRE_ENV, "CI")


def make_shared(root: Path) -> Path:
    """``root/shared`` with a (tiny) WikiText-2 copy and a calibration corpus."""
    shared = root / "shared"
    (shared / "data" / "wikitext-2-raw-v1").mkdir(parents=True)
    (shared / "data" / "calibration").mkdir(parents=True)
    write_jsonl(shared / "data" / "wikitext-2-raw-v1" / "test.jsonl", ["row\n"])
    write_jsonl(shared / "data" / "calibration" / "python-3.11-docs-prose.jsonl", ["some prose " * 20])
    return shared


def test_checkout_found_from_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    shared = make_shared(tmp_path)
    repo = tmp_path / "repo"
    (repo / "src" / "deep").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.chdir(repo / "src" / "deep")
    assert cwd_checkout() == repo
    found = find_wikitext()
    assert found.path == shared / "data" / "wikitext-2-raw-v1"
    assert found.step == f"../shared beside the checkout {repo}"
    assert found.tried[:2] == ("--dataset: not given", f"${WIKITEXT_ENV}: not set")
    assert find_shared() == shared


def test_git_marks_a_checkout_and_the_first_marker_wins(tmp_path: Path, monkeypatch) -> None:
    make_shared(tmp_path)
    outer = tmp_path / "outer"
    inner = outer / "inner"
    inner.mkdir(parents=True)
    (outer / "pyproject.toml").write_text("")
    (inner / ".git").write_text("gitdir: elsewhere\n")  # a worktree's .git is a file
    monkeypatch.chdir(inner)
    assert cwd_checkout() == inner  # not outer: the walk stops at the first marker
    assert shared_candidates()[0] == (f"../shared beside the checkout {inner}", outer / "shared")
    step = f"../shared beside the checkout {inner}: {outer / 'shared' / 'data' / 'wikitext-2-raw-v1'} does not exist"
    assert step in find_wikitext().tried


def test_package_checkout_is_the_one_pplgate_is_imported_from(tmp_path: Path, monkeypatch) -> None:
    root = Path(pplgate.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        pytest.skip(f"pplgate is installed, not imported from a checkout ({pplgate.__file__})")
    assert package_checkout() == root
    monkeypatch.chdir(tmp_path)  # no checkout above the working directory: the package's is used
    if cwd_checkout() is None:
        assert shared_candidates() == [(f"../shared beside the checkout {root}", root.parent / "shared")]
    if (root.parent / "shared").is_dir():
        need_shared("data", "wikitext-2-raw-v1")
        assert find_wikitext().step == f"../shared beside the checkout {root}"


def test_pplgate_shared_replaces_the_checkout_lookup(tmp_path: Path, monkeypatch) -> None:
    shared = make_shared(tmp_path / "elsewhere")
    monkeypatch.setenv(SHARED_ENV, str(shared))
    assert shared_candidates() == [(f"${SHARED_ENV}", shared)]
    assert find_wikitext().step == f"${SHARED_ENV}" and find_calibration().step == f"${SHARED_ENV}"
    monkeypatch.setenv(SHARED_ENV, str(tmp_path / "missing"))
    found = find_wikitext(option="--pplgate-dataset")
    assert found.path is None and found.tried[0] == "--pplgate-dataset: not given"
    assert found.tried[-2] == f"${SHARED_ENV}: {tmp_path / 'missing' / 'data' / 'wikitext-2-raw-v1'} does not exist"
    assert found.tried[-1] == f"{DATA_STEP}: {data_dir() / 'wikitext-2-raw-v1'} does not exist"


def test_the_data_folder_comes_after_the_shared_folder(tmp_path: Path, monkeypatch) -> None:
    shared = make_shared(tmp_path)
    data = tmp_path / "data"
    (data / "wikitext-2-raw-v1").mkdir(parents=True)
    (data / "calibration").mkdir()
    write_jsonl(data / "calibration" / "python-3.11-docs-prose.jsonl", ["prose " * 20])
    monkeypatch.setenv(DATA_DIR_ENV, str(data))
    monkeypatch.setenv(SHARED_ENV, str(shared))
    assert find_wikitext().step == f"${SHARED_ENV}"  # the shared folder, when present, first
    monkeypatch.setenv(SHARED_ENV, str(tmp_path / "missing"))
    for found, path in ((find_wikitext(), data / "wikitext-2-raw-v1"), (find_calibration(), data / "calibration")):
        assert found.step == DATA_STEP and found.path is not None and found.path.is_relative_to(path)
    names = [s.name for s in lookup_steps(WIKITEXT_ENV, ("data", "x"))]
    assert names == [f"${WIKITEXT_ENV}", f"${SHARED_ENV}", DATA_STEP]


def test_the_data_folder_defaults_to_the_user_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "pplgate" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home" / ".cache" / "pplgate" / "data"


@pytest.mark.parametrize(
    ("env", "required"),
    [({}, False), ({"CI": "true"}, True), ({"CI": "1"}, True), ({"CI": "false"}, False), ({REQUIRE_ENV: "1"}, True)],
)
def test_ci_makes_inputs_required(monkeypatch, env, required) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert inputs_required() is required


def test_hub_probe_names_the_endpoint(monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    assert "cannot connect to 127.0.0.1:9" in (hub_unreachable(timeout=1.0) or "")
    monkeypatch.setenv("HF_ENDPOINT", "not a url")
    assert "names no host" in (hub_unreachable() or "")


# --------------------------------------------------------------------------- calibration: $PPLGATE_CALIBRATION


def test_calibration_variable_falls_back_to_the_shared_corpus(tmp_path: Path, monkeypatch) -> None:
    shared = make_shared(tmp_path)
    monkeypatch.setenv(SHARED_ENV, str(shared))
    corpus = shared / "data" / "calibration" / "python-3.11-docs-prose.jsonl"
    for source in ("$PPLGATE_CALIBRATION", "${PPLGATE_CALIBRATION}"):
        assert CalibrationSpec.from_param({"source": source}).resolved_source() == str(corpus)
    assert load_calibration("$PPLGATE_CALIBRATION").source == str(corpus.resolve())
    other = write_jsonl(tmp_path / "mine.jsonl", ["mine " * 10])
    monkeypatch.setenv(CALIBRATION_ENV, str(other))  # the variable, when set, wins
    assert CalibrationSpec(source="$PPLGATE_CALIBRATION").resolved_source() == str(other)


def test_calibration_variable_without_any_corpus_names_the_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(SHARED_ENV, str(tmp_path / "no-shared"))
    with pytest.raises(CalibrationError) as info:
        CalibrationSpec(source="$PPLGATE_CALIBRATION").resolved_source()
    msg = str(info.value)
    assert "python-3.11-docs-prose.jsonl" in msg and f"${CALIBRATION_ENV}: not set" in msg
    assert str(tmp_path / "no-shared" / "data" / "calibration" / "python-3.11-docs-prose.jsonl") in msg
    # another variable of the same prefix is not the calibration variable
    monkeypatch.setenv("PPLGATE_CALIBRATION_X", str(tmp_path / "x.jsonl"))
    assert CalibrationSpec(source="$PPLGATE_CALIBRATION_X").resolved_source() == str(tmp_path / "x.jsonl")

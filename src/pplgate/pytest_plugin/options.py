"""Option values checked once, at configure time: a bad value is one clear usage error, not a traceback per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pplgate.gate.spec import DEVICE_RE  # a profile's device and --pplgate-device: one pattern
from pplgate.pytest_plugin.gpus import GPUS_PER_WORKER_ENV

CACHE_DIR_ENV = "PPLGATE_CACHE_DIR"


def check_device(device: str, *, option: str = "--pplgate-device", pinned: bool = False) -> None:
    """``cpu``, ``cuda`` or ``cuda:N``; an explicit CUDA request needs a CUDA device here."""
    if not DEVICE_RE.match(device):
        raise pytest.UsageError(f"{option} {device!r}: expected cpu, cuda or cuda:N")
    if device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise pytest.UsageError(
            f"{option} {device} was asked for, but torch sees no CUDA device here "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); drop the option to run the "
            "profiles' own devices (GPU tiers then skip), or pass --pplgate-device cpu"
        )
    index = int(device.split(":")[1]) if ":" in device else 0
    count = torch.cuda.device_count()
    if not pinned and index >= count:
        visible = f"cuda:0..cuda:{count - 1}"
        raise pytest.UsageError(f"{option} {device}: only {count} CUDA device(s) are visible ({visible})")


def check_cache_dir(path: str, *, source: str) -> None:
    """The quantization cache root must be a writable directory (created when missing)."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise pytest.UsageError(f"{source} {path}: not a directory (it is a file); point it at a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise pytest.UsageError(f"{source} {path}: cannot create the cache directory ({exc})") from exc
    if not os.access(p, os.W_OK | os.X_OK):
        raise pytest.UsageError(f"{source} {path}: the cache directory is not writable; choose another one")


def check_report_dir(path: str, *, option: str = "--pplgate-report") -> None:
    """The report directory exists, or can be created where it is named (it is written after the measuring)."""
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise pytest.UsageError(f"{option} {path}: not a directory (it is a file); point it at a directory")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise pytest.UsageError(f"{option} {path}: cannot be created, {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise pytest.UsageError(f"{option} {path}: cannot be created, {parent} is not writable")


def check_config_found(config: pytest.Config) -> None:
    """Refuse ``--pplgate-x VALUE`` (two words) when it made pytest miss the project's configuration.

    pytest finds its rootdir and ini file before plugins are loaded, so it reads the VALUE of a plugin option as a
    test path: a value outside the project (an absolute cache dir, say) moves the search there, the project's
    pytest.ini (testpaths, markers, pythonpath) is silently ignored and everything under the current directory is
    collected. ``--pplgate-x=VALUE`` is one word and never read as a path.
    """
    if config.inipath is not None:
        return
    here = config.invocation_params.dir
    marks = {"pytest.ini": "", ".pytest.ini": "", "pyproject.toml": "[tool.pytest", "tox.ini": "[pytest]",
             "setup.cfg": "[tool:pytest]"}  # fmt: skip
    if not any((here / n).is_file() and m in (here / n).read_text(errors="replace") for n, m in marks.items()):
        return
    args = list(config.invocation_params.args)
    for flag, value in zip(args, args[1:], strict=False):
        if flag.startswith(("--pplgate-", "--baselines-dir")) and "=" not in flag and not value.startswith("-"):
            raise pytest.UsageError(
                f"'{flag} {value}': pytest read {value} as a test path while looking for its configuration, and "
                f"so ignored the one in {here}; write it as one word, {flag}={value}"
            )


def validate(config: pytest.Config) -> None:
    """Reject impossible option values before any test runs."""
    check_config_found(config)
    k = config.getoption("--pplgate-max-windows")
    if k is not None and k < 1:
        raise pytest.UsageError(f"--pplgate-max-windows must be >= 1 (the number of windows to score), got {k}")
    group = config.getoption("--pplgate-compare-group")
    if group is not None and group < 1:
        raise pytest.UsageError(f"--pplgate-compare-group must be >= 1 (entries per comparison pass), got {group}")
    per_worker = config.getoption("--pplgate-gpus-per-worker")
    if per_worker < 1:
        raise pytest.UsageError(f"--pplgate-gpus-per-worker must be >= 1, got {per_worker}")
    device = config.getoption("--pplgate-device")
    if device is not None:
        check_device(device, pinned=hasattr(config, "workerinput"))
    report_dir = config.getoption("--pplgate-report")
    if report_dir:
        check_report_dir(report_dir)
    cache_dir = config.getoption("--pplgate-cache-dir")
    if cache_dir is not None:
        check_cache_dir(cache_dir, source="--pplgate-cache-dir")
    elif os.environ.get(CACHE_DIR_ENV):
        check_cache_dir(os.environ[CACHE_DIR_ENV], source=f"${CACHE_DIR_ENV}")


def add_options(parser: pytest.Parser) -> None:
    """The ``pplgate`` option group and the ``pplgate_baselines_dir`` ini key."""
    g = parser.getgroup("pplgate", "pplgate perplexity regression gate")
    g.addoption("--update-baselines", action="store_true", help="re-measure the selected entries and rewrite them")
    g.addoption("--force-update", action="store_true", help="allow --update-baselines across a protocol change")
    g.addoption("--baselines-dir", default=None, help="directory of baseline YAML files (default: <rootdir>/baselines)")
    g.addoption("--pplgate-report", default=None, metavar="DIR", help="write JSON/Markdown/PNG reports into DIR")
    g.addoption("--pplgate-cache-dir", default=None, metavar="DIR", help="quantized-model cache root")
    g.addoption("--pplgate-cache", default="use", choices=["use", "refresh", "off"], help="quantized-model cache mode")
    g.addoption(
        "--pplgate-dataset",
        default=None,
        metavar="PATH",
        help="WikiText-2 test split (else $PPLGATE_WIKITEXT, then ../shared beside the checkout, then the hub)",
    )
    g.addoption("--pplgate-device", default=None, help="run every profile on this device (cpu, cuda, cuda:N)")
    g.addoption(
        "--pplgate-max-windows",
        type=int,
        default=None,
        metavar="K",
        help="score only K windows (quick local runs; compared with the first K recorded windows, marked partial)",
    )
    g.addoption(
        "--pplgate-gpus-per-worker",
        type=int,
        default=int(os.environ.get(GPUS_PER_WORKER_ENV, "1")),
        metavar="K",
        help="with pytest-xdist (-n N --dist loadgroup): each worker keeps K GPUs of the visible ones "
        f"(default 1, or ${GPUS_PER_WORKER_ENV})",
    )
    g.addoption(
        "--pplgate-compare-group",
        type=int,
        default=None,
        metavar="K",
        help="compare at most K entries with their reference per pass (default: all of a profile's in one pass; "
        "a smaller K needs less memory and runs the reference's forward once more per extra pass)",
    )
    parser.addini("pplgate_baselines_dir", "directory of baseline YAML files, relative to rootdir", default="baselines")


def add_markers(config: pytest.Config) -> None:
    """The markers the gate's items carry."""
    config.addinivalue_line("markers", "pplgate: a pplgate perplexity gate test (collected from baselines/*.yaml)")
    config.addinivalue_line("markers", "gpu: GPU tier of the gate (skips where no CUDA device exists)")
    config.addinivalue_line("markers", "smoke: CPU tier of the gate (a few windows, runs everywhere)")
    config.addinivalue_line("markers", "xdist_group(name): keep tests of one model on one pytest-xdist worker")
    config.addinivalue_line(
        "markers",
        "pplgate_model(name): the xdist_group of a test using the ppl_* fixtures (default: its module), "
        "so that --dist loadgroup keeps a model's tests on one worker",
    )

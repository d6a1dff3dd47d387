"""Shared fixtures of pplgate's own test-suite: ../shared reference data and tiny seeded models.

(The top-level ``conftest.py`` belongs to the pytest plugin. Fixtures live here, helper functions in
``support.py``; this file puts ``tests/`` on ``sys.path``, so tests in subfolders import ``support`` too.)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
from support import SHARED_ENV, shared_root, skip_or_fail, tiny_gpt2, tiny_llama

from pplgate.locate import DATA_DIR_ENV

# The user data folder (`pplgate data fetch`) is a step of every lookup: the suite never sees the developer's
# own (tests that use the folder set their own). A path that does not exist; fetched files never land there.
os.environ[DATA_DIR_ENV] = os.path.join(tempfile.gettempdir(), f"pplgate-tests-{os.getpid()}-no-data-folder")
# xdist workers share the cores: each gets cores // workers torch threads (two workers of 2 threads each on 2
# cores made the CPU tier 3.6x slower); an OMP_NUM_THREADS of the caller wins. Set before torch is imported.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    _share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ["OMP_NUM_THREADS"] = str(max(1, _share))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: loads the real SmolLM2 model (tens of seconds on CPU)")
    config.addinivalue_line(
        "markers", "fidelity: pplgate's engine vs AutoAWQ's own loop on CUDA (scheduled job, not pre-merge)"
    )
    config.addinivalue_line("markers", "shared: needs the ../shared reference data")


# -- tiers: plain `pytest` runs the fast tier; PPLGATE_TIER=full (set by .ci/run) runs everything ----------
TIER_ENV = "PPLGATE_TIER"
# what only the full tier runs, besides the `slow` tests (the real SmolLM2 model, the examples): the CPU gate
# tier (real quantizers on SmolLM2), the package path, the quantizer tier (the tests that run AutoAWQ,
# llm-compressor, bitsandbytes, torchao or HQQ, the architecture conformance matrix among them) and the
# plugin tests that run many pytest sessions or start xdist workers (tens of seconds each on 2 cores)
FULL_TIER_PATHS = (
    "baselines/",
    "tests/test_init.py::test_init_end_to_end",
    "tests/models/test_architectures.py",
    "tests/models/test_awq.py",
    "tests/models/test_awq_scale_search.py",
    "tests/models/test_llmc.py",
    "tests/models/test_hf_quantizer.py",
    "tests/models/test_cache_base_check.py",
    "tests/models/test_group_sizes.py",
    "tests/models/test_compat.py",
    "tests/protocol/test_progress.py",
    "tests/pytest_plugin/test_gate_kld.py",
    "tests/pytest_plugin/test_shard.py",
    "tests/pytest_plugin/test_free_models.py",
    "tests/protocol/test_autoawq_loop.py",
)
FULL_TIER_WORDS = ("xdist", "workers")


def _full_only(item: pytest.Item) -> bool:
    name = item.nodeid.split("::", 1)[-1]
    return (
        item.get_closest_marker("slow") is not None
        or item.nodeid.startswith(FULL_TIER_PATHS)
        or any(word in name for word in FULL_TIER_WORDS)
    )


def _tier(config: pytest.Config) -> str:
    """``fast`` for a plain ``pytest`` (the testpaths, no ``-m``); ``full`` under PPLGATE_TIER=full or when
    paths or a marker expression are named (``pytest baselines``, ``pytest -m gpu``: what was asked for runs)."""
    tier = os.environ.get(TIER_ENV, "fast")
    if tier not in ("fast", "full"):
        raise pytest.UsageError(f"{TIER_ENV}={tier!r}: use fast (the default) or full")
    named = config.args_source != pytest.Config.ArgsSource.TESTPATHS or bool(config.option.markexpr)
    return "full" if named else tier


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fast tier deselects what only the full tier runs. The longest tests first (the CPU gate tier, then
    the ``slow`` tests), each group in its collected order: under xdist they start at once instead of ending the
    run on one worker."""
    if _tier(config) == "fast":
        dropped = [item for item in items if _full_only(item)]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if not _full_only(item)]

    def rank(item: pytest.Item) -> int:
        return 0 if item.nodeid.startswith("baselines/") else 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)


def pytest_report_header(config: pytest.Config) -> str:
    if _tier(config) == "full":
        return "pplgate tier: full (every collected test: the CPU gate tier, the examples, the package path)"
    return (
        f"pplgate tier: fast (unit and plugin tests on tiny models); everything: {TIER_ENV}=full pytest, "
        "or bash .ci/run"
    )


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    p = shared_root()
    if not (p / "data" / "wikitext-2-raw-v1").is_dir():
        skip_or_fail(f"shared reference data not found at {p} (set {SHARED_ENV} to the shared/ folder)")
    return p


@pytest.fixture(scope="session")
def wikitext_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "wikitext-2-raw-v1"


def _tokenizer_dir(shared_dir: Path, name: str) -> Path:
    p = shared_dir / "tokenizers" / name
    if not p.is_dir():
        skip_or_fail(f"tokenizer {name} not found at {p}")
    return p


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir(shared_dir: Path) -> Path:
    return _tokenizer_dir(shared_dir, "gpt2")


@pytest.fixture(scope="session")
def gpt2_tokenizer(gpt2_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gpt2_tokenizer_dir))


@pytest.fixture(scope="session")
def llama2_tokenizer(shared_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_tokenizer_dir(shared_dir, "llama2")))


@pytest.fixture(scope="session")
def canonical_text(wikitext_dir: Path):
    from pplgate.protocol.dataset import load_canonical_text

    return load_canonical_text(wikitext_dir / "test.jsonl")


@pytest.fixture
def make_tiny_llama():
    """Factory of seeded, randomly initialised fp32 Llama models (hidden 32, 2 layers)."""
    return tiny_llama


@pytest.fixture
def make_tiny_gpt2():
    """Factory of seeded, randomly initialised fp32 GPT-2 models (n_embd 32, 2 layers)."""
    return tiny_gpt2


# -- the model directories several test modules share (one definition each) --------------------------------
@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The plugin tests' model directory (:func:`support.save_gate_model`), built once per session."""
    from support import save_gate_model

    return save_gate_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny Llama (hidden 128, intermediate 256) with the GPT-2 tokenizer, saved as a model directory
    (:func:`support.save_tiny_llama`), built once per test module."""
    from support import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("m") / "tiny")


# -- in-process pytester sessions and pyarrow ---------------------------------------------------------------
@pytest.fixture(autouse=True)
def _datasets_imported_outside_pytester(request: pytest.FixtureRequest) -> None:
    """Import ``datasets`` in this process before any in-process pytester session can: a session that imports
    it first drops it from ``sys.modules`` when it ends (pytester's module snapshot), and the next import
    registers pyarrow's extension types again ("ArrowKeyError: ... already defined")."""
    if "pytester" in request.fixturenames:
        _import_datasets()


def _import_datasets() -> None:
    import importlib.util

    if "datasets" not in sys.modules and importlib.util.find_spec("datasets") is not None:
        import datasets  # noqa: F401

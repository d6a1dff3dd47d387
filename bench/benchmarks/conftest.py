"""Shared inputs of the pytest-benchmark suite: the canonical text, SmolLM2's tokens and the device.

Run: ``pytest bench/benchmarks --benchmark-autosave`` (then ``--benchmark-compare --benchmark-compare-fail=
mean:20%`` against the saved run). These are benchmarks, not tests: nothing here asserts a time.
``--bench-device cuda`` measures on the GPU (default: CUDA when available, else the CPU); the cache of
de-quantized models and quantized entries is ``$PPLGATE_CACHE_DIR`` as everywhere else.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-device", default="auto", help="cpu, cuda or auto (default) for the model benchmarks")


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
    from pplgate.models.source import resolve_device

    return str(resolve_device(request.config.getoption("--bench-device")))


@pytest.fixture(scope="session")
def canonical():
    """The canonical WikiText-2 test text (skips where the dataset cannot be found)."""
    from pplgate.errors import DatasetNotFound
    from pplgate.protocol.dataset import load_canonical_text

    try:
        return load_canonical_text(None)
    except DatasetNotFound as exc:
        pytest.skip(f"no WikiText-2 test split here: {exc}")


@pytest.fixture(scope="session")
def measurer():
    from pplgate.measure import Measurer

    return Measurer()


@pytest.fixture(scope="session")
def smollm2():
    from pplgate.errors import ModelLoadError
    from pplgate.models.source import resolve_source

    try:
        return resolve_source(None)
    except ModelLoadError as exc:
        pytest.skip(str(exc))

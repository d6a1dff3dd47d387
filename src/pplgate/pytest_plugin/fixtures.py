"""The fixtures for tests a team writes itself: ``ppl_model``, ``ppl_variant`` and ``ppl_regression``.

They measure through the gate session's :class:`~pplgate.measure.Measurer` (one text, one tokenization,
one loaded float model per source/dtype/device per session and xdist worker, the quantization cache on
disk), and ``ppl_regression.check`` judges through the same verdict, store, update flow and reports as
the entries collected from ``baselines/*.yaml`` (:mod:`pplgate.pytest_plugin.checks`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from pplgate.pytest_plugin.checks import PplModel, PplRegression
from pplgate.pytest_plugin.items import CUDA_SKIP, gate_of

FIXTURES = ("ppl_model", "ppl_variant", "ppl_regression")
DEFAULT_MODEL = "smollm2-135m-instruct"


def _device(config: pytest.Config, device: str) -> str:
    """``--pplgate-device`` wins (as for every collected profile); CUDA without CUDA skips the test."""
    device = config.getoption("--pplgate-device") or device
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip(CUDA_SKIP)
    return device


def _prepare(
    config: pytest.Config, source: Any, kind: str, params: Mapping[str, Any], device: str, tokenizer: str | None
) -> PplModel:
    from pplgate.errors import DatasetNotFound
    from pplgate.locate import inputs_required

    measurer = gate_of(config).measurer
    try:
        measurer.text()  # the dataset first: missing data skips outside CI, before any model loads
    except DatasetNotFound as exc:
        if not inputs_required():
            pytest.skip(str(exc))
        raise
    prepared = measurer.prepare(source, kind=kind, params=dict(params), device=device, tokenizer=tokenizer)
    tok = measurer.tokens(source, tokenizer)[0]
    return PplModel(source, kind, dict(params), device, tokenizer, prepared.model, tok)


@pytest.fixture(scope="session")
def ppl_model(pytestconfig: pytest.Config) -> Callable[..., PplModel]:
    """pplgate: load a model once per session (and xdist worker) on its device.

    ``ppl_model(source="smollm2-135m-instruct", dtype="fp32", *, device="cpu", gguf_file=None,
    revision=None, tokenizer=None) -> PplModel`` (``.model``, ``.tokenizer``). ``source``: a hub id,
    a local directory, a .gguf file or the embedded default; ``dtype``: fp16, bf16 or fp32;
    ``--pplgate-device`` overrides ``device``; CUDA without CUDA skips the test.
    """
    from pplgate.models.source import resolve_source

    def load(
        source: str = DEFAULT_MODEL,
        dtype: str = "fp32",
        *,
        device: str = "cpu",
        gguf_file: str | None = None,
        revision: str | None = None,
        tokenizer: str | None = None,
    ) -> PplModel:
        src = resolve_source(source, gguf_file, revision)
        return _prepare(pytestconfig, src, dtype, {}, _device(pytestconfig, device), tokenizer)

    return load


@pytest.fixture(scope="session")
def ppl_variant(pytestconfig: pytest.Config, ppl_model: Callable[..., PplModel]) -> Callable[..., PplModel]:
    """pplgate: a variant of a loaded model: a registered kind (rtn, awq, ...; kind ``user`` runs your
    function ``package.module:function``) through the quantization cache.

    ``ppl_variant(base, kind, params=None) -> PplModel``; ``base`` is a ``ppl_model(...)`` result or a
    source name (loaded as ``ppl_model(base)``).
    """

    def make(base: PplModel | str, kind: str, params: Mapping[str, Any] | None = None) -> PplModel:
        if isinstance(base, str):
            base = ppl_model(base)
        return _prepare(pytestconfig, base.source, kind, params or {}, base.device, base.tokenizer_ref)

    return make


@pytest.fixture
def ppl_regression(request: pytest.FixtureRequest) -> PplRegression:
    """pplgate: ``ppl_regression.check(model, name=..., tolerance=...)`` measures the canonical WikiText-2
    perplexity of a ``ppl_model``/``ppl_variant`` result and compares it with entry ``tests.<name>`` of
    ``<baselines dir>/<test module>.yaml`` (or ``baseline=``), like a collected gate entry. A missing entry
    is recorded and the test fails once; ``--update-baselines`` re-records."""
    return PplRegression(request.node)


def check_models_intact(item: pytest.Item) -> None:
    """After a test using the fixtures: the session's shared models must be as loaded. A test that changed one in
    place fails (at teardown, by name), and later tests and updates measure a freshly loaded copy."""
    if not set(FIXTURES) & set(getattr(item, "fixturenames", ())):
        return
    changed = gate_of(item.config).measurer.changed_models()  # the tests using the fixtures made the Measurer
    if changed:
        pytest.fail(
            f"pplgate: {item.nodeid} changed the session's shared model {', '.join(changed)} in place; every later "
            "variant and measurement would be built from the changed weights. Change a copy "
            "(copy.deepcopy(ppl_model(...).model)) or make a variant (ppl_variant); later tests get a fresh load",
            pytrace=False,
        )


def group_items(items: list[pytest.Item]) -> None:
    """Tests using the fixtures get an ``xdist_group`` (unless they have one): the ``pplgate_model(name)``
    marker's name, else their module, so that ``--dist loadgroup`` keeps a model's tests on one worker."""
    for item in items:
        if not set(FIXTURES) & set(getattr(item, "fixturenames", ())):
            continue
        if item.get_closest_marker("xdist_group") is not None:
            continue
        marker = item.get_closest_marker("pplgate_model")
        name = str(marker.args[0]) if marker is not None and marker.args else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(name=name))

"""The test-suite's own contract with ../shared: skipped with the reason when absent, a failure in CI."""

from __future__ import annotations

import pytest
from pplgate_testutils import REQUIRE_ENV, SHARED_ENV, need_shared


def test_need_shared_returns_existing_paths(monkeypatch, tmp_path):
    (tmp_path / "tokenizers" / "gpt2").mkdir(parents=True)
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))
    assert need_shared("tokenizers", "gpt2") == tmp_path.resolve() / "tokenizers" / "gpt2"


def _outcome(*rel: str, **kw) -> BaseException | None:
    """What ``need_shared`` raised, caught here so a skip cannot turn this test itself into a skip."""
    try:
        need_shared(*rel, **kw)
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        return exc
    return None


@pytest.mark.parametrize(("require", "outcome"), [("", pytest.skip.Exception), ("1", pytest.fail.Exception)])
def test_missing_shared_data_skips_or_fails_under_require(monkeypatch, tmp_path, require, outcome):
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))
    monkeypatch.setenv(REQUIRE_ENV, require)
    exc = _outcome("tokenizers", "gpt2")
    assert type(exc) is outcome and "tokenizers/gpt2 is absent" in str(exc)
    # also at module level, as test_gate_plugin uses it
    assert type(_outcome("data", allow_module_level=True)) is outcome

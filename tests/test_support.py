"""The test-suite's own contract with ../shared: skipped with the reason when absent, a failure in CI."""

from __future__ import annotations

import pytest
from support import REQUIRE_ENV, SHARED_ENV, need_module, need_shared


def test_need_shared_returns_existing_paths(monkeypatch, tmp_path):
    (tmp_path / "tokenizers" / "gpt2").mkdir(parents=True)
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))
    assert need_shared("tokenizers", "gpt2") == tmp_path.resolve() / "tokenizers" / "gpt2"


def _outcome(*rel: str, helper=need_shared, **kw) -> BaseException | None:
    """What ``helper`` raised, caught here so a skip cannot turn this test itself into a skip."""
    try:
        helper(*rel, **kw)
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        return exc
    return None


STRICTNESS = [
    ({"CI": "", REQUIRE_ENV: ""}, pytest.skip.Exception),
    ({"CI": "", REQUIRE_ENV: "1"}, pytest.fail.Exception),
    ({"CI": "true", REQUIRE_ENV: ""}, pytest.fail.Exception),
]


@pytest.mark.parametrize(("env", "outcome"), STRICTNESS)
def test_missing_shared_data_skips_or_fails_under_require(monkeypatch, tmp_path, env, outcome):
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    exc = _outcome("tokenizers", "gpt2")
    assert type(exc) is outcome and "tokenizers/gpt2 is absent" in str(exc)
    # also at module level, as test_gate_plugin uses it
    assert type(_outcome("data", allow_module_level=True)) is outcome


@pytest.mark.parametrize(("env", "outcome"), STRICTNESS)
def test_missing_module_skips_or_fails_with_the_install_command(monkeypatch, env, outcome):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    exc = _outcome("pplgate_no_such_module", "pip install pplgate-no-such-module", helper=need_module)
    assert type(exc) is outcome
    assert "'pplgate_no_such_module' is not installed" in str(exc)
    assert "install it with: pip install pplgate-no-such-module" in str(exc)


def test_need_module_returns_the_module():
    assert need_module("json", "(stdlib)").dumps([1]) == "[1]"

"""Provenance of a recorded baseline (moved from test_baselines)."""

from __future__ import annotations


def test_git_commit_from_environment_for_trees_without_git(monkeypatch, tmp_path):
    from pplgate.provenance import git_commit

    monkeypatch.delenv("PPLGATE_GIT_COMMIT", raising=False)
    assert git_commit(str(tmp_path)) is None  # not a repository
    monkeypatch.setenv("PPLGATE_GIT_COMMIT", "abc1234")
    assert git_commit(str(tmp_path)) == "abc1234"

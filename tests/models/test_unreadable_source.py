"""Issue #24: a local model path this process cannot read (mode 000, a file inside it unreadable) is one
ModelLoadError naming the path and the fix, not a PermissionError traceback from transformers or the hashing.

Root reads through mode 000, so the permission check itself is the operating system's answer: under root the
tests make ``os.scandir`` / ``open`` answer as the OS does for another user (EACCES), the boundary pplgate
calls; the real mode-000 case runs where the tests do not run as root (as the read-only tests of the caches)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from support import save_tiny_llama

from pplgate.errors import ModelLoadError
from pplgate.models import source as source_mod
from pplgate.models.source import resolve_source

FIX = r"is not readable \(Permission denied\); give this user read access \(chmod -R u\+rX {}\)"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("m") / "tiny")


def _denied(path: str) -> PermissionError:
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)


def test_a_folder_that_cannot_be_listed(model_dir, monkeypatch):
    real = os.scandir

    def scandir(p):
        if Path(p) == model_dir:
            raise _denied(str(p))
        return real(p)

    monkeypatch.setattr(source_mod.os, "scandir", scandir)
    with pytest.raises(ModelLoadError, match=f"^model path {model_dir} " + FIX.format(model_dir)):
        resolve_source(str(model_dir))


def test_a_file_inside_that_cannot_be_opened(model_dir, monkeypatch):
    config = model_dir / "config.json"
    real = open

    def fake_open(p, *a, **kw):
        if Path(p) == config:
            raise _denied(str(p))
        return real(p, *a, **kw)

    monkeypatch.setattr(source_mod, "open", fake_open, raising=False)
    with pytest.raises(ModelLoadError, match=f"^model path {config} " + FIX.format(model_dir)):
        resolve_source(str(model_dir))
    monkeypatch.undo()
    assert resolve_source(str(model_dir)).path_or_id == str(model_dir)  # readable again: resolved as before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads through mode 000")
def test_mode_000(model_dir):
    model_dir.chmod(0o000)
    try:
        with pytest.raises(ModelLoadError, match=FIX.format(model_dir)):
            resolve_source(str(model_dir))
    finally:
        model_dir.chmod(0o755)

"""Copied by scale.py as the conftest.py of its generated gate: each process (xdist worker or the only
process) writes when it started and when each test began and ended, to $PPLGATE_TIMELINE_DIR/<worker>.json.

Times are ``time.time()`` (one clock for every process on the machine), so the runs' per-worker
timelines line up with the launch time that scale.py records.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

IMPORTED = time.time()  # this conftest is imported early in each process: after python, pytest and the plugins
EVENTS: list[dict] = []


def _worker(config: pytest.Config) -> str:
    return getattr(config, "workerinput", {}).get("workerid", "main")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    start = time.time()
    yield
    EVENTS.append({"nodeid": item.nodeid, "start": start, "end": time.time()})


def pytest_collection_finish(session: pytest.Session) -> None:
    EVENTS.append({"event": "collected", "at": time.time(), "n_items": len(session.items)})


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = os.environ.get("PPLGATE_TIMELINE_DIR")
    if not out:
        return
    worker = _worker(session.config)
    data = {
        "worker": worker,
        "pid": os.getpid(),
        "conftest_imported": IMPORTED,
        "finished": time.time(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "events": EVENTS,
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"{worker}.json").write_text(json.dumps(data, indent=1))

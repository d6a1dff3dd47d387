"""A pytest plugin for timing runs: each process (controller or xdist worker) prints when it reaches each
phase of a session, as seconds since ``$PHASE_PROBE_T0`` (a ``time.time()`` taken before the launch):

    PROBE gw0 3.02 collected

Load it with ``-p phase_probe`` (``bench/multigpu`` on ``PYTHONPATH``); it changes nothing else.
"""

from __future__ import annotations

import atexit
import os
import sys
import time

import pytest

T0 = float(os.environ.get("PHASE_PROBE_T0", "0") or 0)
_config: pytest.Config | None = None


def _who(config: pytest.Config | None) -> str:
    return "main" if config is None else getattr(config, "workerinput", {}).get("workerid", "main")


def mark(what: str, config: pytest.Config | None = None) -> None:
    sys.stderr.write(f"PROBE {_who(config or _config)} {time.time() - T0:.3f} {what}\n")
    sys.stderr.flush()


def pytest_configure(config: pytest.Config) -> None:
    global _config
    _config = config
    mark(f"configure (modules imported: {len(sys.modules)})")
    atexit.register(mark, "atexit", config)


@pytest.hookimpl(tryfirst=True)
def pytest_collection(session: pytest.Session) -> None:
    mark(f"collection start (torch imported: {'torch' in sys.modules})")


def pytest_collection_finish(session: pytest.Session) -> None:
    mark(f"collected {len(session.items)} (torch imported: {'torch' in sys.modules})")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logstart(nodeid: str, location: tuple) -> None:
    mark("start " + nodeid.split("::")[-1])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logfinish(nodeid: str, location: tuple) -> None:
    mark("end " + nodeid.split("::")[-1])


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session):
    mark(f"sessionfinish begins (torch imported: {'torch' in sys.modules})")
    yield
    mark("sessionfinish ends")


def pytest_testnodedown(node, error) -> None:
    mark(f"node down {node.gateway.id}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    mark("terminal summary begins")
    yield
    mark("terminal summary ends")


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    mark("unconfigure (last hook)", config)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Controller: also mark when xdist starts and ends waiting for its workers to exit."""
    try:
        from xdist.workermanage import NodeManager
    except ImportError:
        return
    if getattr(NodeManager.teardown_nodes, "_probed", False):
        return
    original = NodeManager.teardown_nodes

    def teardown_nodes(self: NodeManager) -> None:
        mark("xdist: waiting for the workers to exit")
        original(self)
        mark("xdist: workers exited")

    teardown_nodes._probed = True  # type: ignore[attr-defined]
    NodeManager.teardown_nodes = teardown_nodes  # type: ignore[method-assign]

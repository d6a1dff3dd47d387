"""The plugin's hooks: each hands off to the gate session, the collector or the xdist helpers in a few lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pplgate.pytest_plugin import fixtures, options, records, shard, xdist
from pplgate.pytest_plugin import items as gate_items
from pplgate.pytest_plugin import session as gate_session
from pplgate.pytest_plugin.fixtures import ppl_model, ppl_regression, ppl_variant


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)
    shard.add_option(parser.getgroup("pplgate"))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    xdist.configure_worker(config)
    options.add_markers(config)
    options.validate(config)
    shard.register(config)
    config.stash[gate_items.GATE_KEY] = gate_session.GateSession(config)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    return gate_items.collect_file(file_path, parent)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    gate_session.gate_of(config).order = gate_items.order_items(items)
    fixtures.group_items(items)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    try:
        fixtures.check_models_intact(item)
    finally:
        gate_session.gate_of(item.config).free_after(item, nextitem)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    rep = yield
    records.attach_record(item, call, rep)
    return rep


class _ReportHooks:
    """Registered at session start so that the controller sees every report (its own and the workers')."""

    def __init__(self, config: pytest.Config) -> None:
        self.gate = gate_session.gate_of(config)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.gate.on_report(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self.gate.on_collect_report(report)


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.pluginmanager.register(_ReportHooks(session.config), "pplgate-report-hooks")


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """A malformed baseline file is a collection error of that file; the other files still run."""
    gate = gate_session.gate_of(session.config)
    if session.testsfailed and session.testsfailed == gate.baseline_collect_errors:
        session.config.option.continue_on_collection_errors = True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    gate_session.gate_of(session.config).finish(session, exitstatus)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    gate_session.gate_of(config).summary(terminalreporter)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    xdist.hand_out_gpus(node)


@pytest.hookimpl(optionalhook=True, tryfirst=True)  # before xdist's own (registered later, called earlier)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    return xdist.make_scheduler(config, log)


__all__ = [
    "ppl_model",
    "ppl_regression",
    "ppl_variant",
    "pytest_addoption",
    "pytest_collect_file",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_configure_node",
    "pytest_runtest_makereport",
    "pytest_runtest_teardown",
    "pytest_runtestloop",
    "pytest_sessionfinish",
    "pytest_sessionstart",
    "pytest_terminal_summary",
    "pytest_xdist_make_scheduler",
]

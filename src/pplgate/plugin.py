"""The pytest plugin's registered name (entry point ``pytest11: pplgate.plugin``): the hooks live in
:mod:`pplgate.pytest_plugin`; this module re-exports them so existing ``-p pplgate.plugin`` /
``pytest_plugins = ["pplgate.plugin"]`` lines keep working."""

from pplgate.pytest_plugin.hooks import *  # noqa: F403
from pplgate.pytest_plugin.hooks import __all__ as _hooks
from pplgate.pytest_plugin.items import GATE_KEY, BaselineFile, GateFailure, GateItem
from pplgate.pytest_plugin.session import GateSession

__all__ = [*_hooks, "GATE_KEY", "BaselineFile", "GateFailure", "GateItem", "GateSession"]

"""``--pplgate-shard K/N``: run one shard of the gate per CI runner (a job matrix), merge with ``pplgate report merge``.

The split itself is :mod:`pplgate.gate.shard` (by model for gate entries, by module for other tests).
It runs after pytest's own ``-k``/``-m`` deselection, so every shard must get the same selection
arguments. With ``--pplgate-report DIR`` the shard writes ``DIR/pplgate-shard.json`` (every selected
entry and its shard, and this session's exit status) beside the JSON report; the merge command uses
it to prove that every entry was reported exactly once. Under pytest-xdist the workers collect and
split; the manifest travels to the controller in ``workeroutput``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pplgate.gate import reports
from pplgate.gate.shard import MANIFEST_NAME, GateEntry, ShardSpec, assign, manifest, module_of, sha256_file
from pplgate.pytest_plugin.items import GateItem
from pplgate.pytest_plugin.records import report_model_name

OPTION = "--pplgate-shard"
WORKEROUTPUT_KEY = "pplgate_shard"


def add_option(group: Any) -> None:
    group.addoption(
        OPTION,
        default=None,
        metavar="K/N",
        help="run shard K of N (1-based): gate entries split by model, other tests by module, "
        "balanced by entry/test count; merge the shards' --pplgate-report dirs with `pplgate report merge`",
    )


def register(config: pytest.Config) -> None:
    """Parse ``--pplgate-shard`` (a usage error when malformed) and register the shard plugin when given."""
    text = config.getoption(OPTION)
    if text is None:
        return
    try:
        spec = ShardSpec.parse(text, OPTION)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.pluginmanager.register(ShardPlugin(config, spec), "pplgate-shard")


def _group_of(item: pytest.Item) -> str:
    if isinstance(item, GateItem):
        return item.spec.model.name
    mark = item.get_closest_marker("xdist_group")
    if mark is not None:
        name = mark.args[0] if mark.args else mark.kwargs.get("name")
        if name:
            return str(name)
    return module_of(item.nodeid)


def git_head(rootdir: Path) -> str | None:
    """The commit checked out at ``rootdir`` (None outside git, or without git)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(rootdir), "rev-parse", "--verify", "-q", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    head = out.stdout.strip()
    return head if out.returncode == 0 and head else None


def uses_fixture(item: pytest.Item) -> bool:
    """A test that checks entries with the ``ppl_regression`` fixture."""
    return not isinstance(item, GateItem) and "ppl_regression" in getattr(item, "fixturenames", ())


def baseline_hashes(items: list[pytest.Item], baselines_dir: Path | None, rootdir: Path) -> dict[str, str]:
    """sha256 of every baseline file the session reads, hashed at collection (before any update is written):
    the collected entries' files and the ``ppl_regression`` tests' ``<baselines dir>/<module stem>.yaml``
    (a file named by ``baseline=`` is not known here: the merge checks its entries by their recorded block)."""
    paths = {Path(it.spec.path) for it in items if isinstance(it, GateItem)}
    if baselines_dir is not None:
        paths |= {baselines_dir / f"{it.path.stem}.yaml" for it in items if uses_fixture(it)}
    return {reports.relpath(str(p), rootdir): sha256_file(p) for p in sorted(paths) if p.is_file()}


def split(
    items: list[pytest.Item], spec: ShardSpec, rootdir: Path, baselines_dir: Path | None = None
) -> tuple[list[pytest.Item], list[pytest.Item], dict]:
    """``(kept, dropped, manifest)`` for this shard; ``items`` keeps its order."""
    gate_w: dict[str, float] = {}
    other_w: dict[str, float] = {}
    for it in items:
        weights = gate_w if isinstance(it, GateItem) else other_w
        g = _group_of(it)
        weights[g] = weights.get(g, 0) + 1
    where = assign(gate_w, other_w, spec.count)
    kept = [it for it in items if where[_group_of(it)] == spec.index]
    dropped = [it for it in items if where[_group_of(it)] != spec.index]
    entries = [
        GateEntry(
            nodeid=it.nodeid,
            model=report_model_name(it.source),
            file=reports.relpath(str(it.spec.path), rootdir),
            profile=it.profile.name,
            variant=it.variant.name,
            shard=where[_group_of(it)],
        )
        for it in items
        if isinstance(it, GateItem)
    ]
    n_other = sum(not isinstance(it, GateItem) for it in items)
    fixture_tests = {it.nodeid: where[_group_of(it)] for it in items if uses_fixture(it)}
    from pplgate import __version__

    m = manifest(
        spec,
        entries,
        other_tests=n_other,
        other_tests_here=sum(not isinstance(it, GateItem) for it in kept),
        groups=where,
        fixture_tests=fixture_tests,
        commit=git_head(rootdir),
        version=__version__,
        baselines=baseline_hashes(items, baselines_dir, rootdir),
    )
    return kept, dropped, m


class ShardPlugin:
    """Deselects the other shards' tests and writes the shard manifest (controller side)."""

    def __init__(self, config: pytest.Config, spec: ShardSpec) -> None:
        self.config, self.spec = config, spec
        self.manifest: dict[str, Any] | None = None
        self.written: Path | None = None

    @pytest.hookimpl(trylast=True)  # after -k/-m deselection and the gate's own ordering
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config, items: list) -> None:
        from pplgate.pytest_plugin.session import gate_of

        gate = gate_of(config)
        kept, dropped, self.manifest = split(items, self.spec, config.rootpath, gate.baselines_dir())
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept
        keep = set(kept)
        gate.order = [it for it in gate.order if it in keep]  # free models after the last test *of this shard*
        workeroutput = getattr(config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput[WORKEROUTPUT_KEY] = self.manifest

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist controller: every worker split the same collection; keep the first manifest that arrives."""
        m = getattr(node, "workeroutput", {}).get(WORKEROUTPUT_KEY)
        if m is not None and self.manifest is None:
            self.manifest = m

    @pytest.hookimpl(trylast=True)  # after the gate's finish, which may still fail the session
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if hasattr(self.config, "workerinput") or self.manifest is None:
            return
        m = self.manifest
        if not self._mine() and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and m["groups"]:
            session.exitstatus = pytest.ExitCode.OK  # more shards than groups: an empty shard is not a failure
        m["exitstatus"] = int(session.exitstatus)
        report_dir = self.config.getoption("--pplgate-report")
        if report_dir:
            d = Path(report_dir)
            d.mkdir(parents=True, exist_ok=True)
            self.written = d / MANIFEST_NAME
            self.written.write_text(json.dumps(m, indent=2) + "\n", encoding="utf-8")

    def _mine(self) -> int:
        m = self.manifest or {}
        return sum(e["shard"] == self.spec.index for e in m.get("entries", [])) + m.get("other_tests_here", 0)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if hasattr(self.config, "workerinput") or self.manifest is None:
            return
        m = self.manifest
        mine = [e for e in m["entries"] if e["shard"] == self.spec.index]
        models = sorted({e["model"] for e in mine})
        terminalreporter.write_line(
            f"pplgate shard {self.spec}: {len(mine)} of {len(m['entries'])} gate entries "
            f"(model(s): {', '.join(models) or 'none'}), {m['other_tests_here']} of {m['other_tests']} other tests; "
            f"gate entries per shard: {m['entries_per_shard']}"
        )
        if self.written:
            terminalreporter.write_line(f"pplgate shard manifest: {self.written}")

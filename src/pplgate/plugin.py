"""The pplgate pytest plugin: one test per (model, profile, variant) of ``baselines/*.yaml``.

Loaded through the ``pytest11`` entry point ``pplgate.plugin`` (and, in this repository, the
top-level ``conftest.py``). Baseline files are collected by a custom :class:`pytest.File`
collector so that a malformed file is a collection error of *that file* and test ids come
straight from the YAML: ``<model>[<profile>-<variant>]``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pplgate.devices import GPUS_PER_WORKER_ENV, assign_gpus, pin_worker, visible_gpu_ids
from pplgate.errors import BaselineError, PplgateError
from pplgate.gate import reports
from pplgate.gate.spec import BaselineSpec, EntrySpec, ProfileSpec, parse_baseline
from pplgate.gate.store import write_updates
from pplgate.gate.verdict import (
    GateRecord,
    Measured,
    Status,
    Target,
    is_partial,
    judge,
    measured_record,
    new_record,
    partial_update_refusal,
)
from pplgate.pytest_plugin.options import validate as validate_options

if TYPE_CHECKING:
    from pplgate.measure import Measurement, Measurer

GATE_KEY = pytest.StashKey["GateSession"]()
CUDA_SKIP = (
    "gpu tier: no CUDA device available (torch.cuda.is_available() is False); "
    "run `pytest -m smoke` for the CPU tier or pass --pplgate-device to run this profile elsewhere"
)


class GateFailure(Exception):
    """The gate's verdict: a regression, protocol drift or a missing baseline (not a crash)."""

    def __init__(self, message: str, status: Status) -> None:
        super().__init__(message)
        self.status = status


def _known_kinds() -> list[str]:
    """The variant kinds, for validating baseline files (names only: imports no kind, nor torch)."""
    from pplgate.models.registry import known_kinds

    return known_kinds()


# --------------------------------------------------------------------------- options & markers


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("pplgate", "pplgate perplexity regression gate")
    g.addoption("--update-baselines", action="store_true", help="re-measure the selected entries and rewrite them")
    g.addoption("--force-update", action="store_true", help="allow --update-baselines across a protocol change")
    g.addoption("--baselines-dir", default=None, help="directory of baseline YAML files (default: <rootdir>/baselines)")
    g.addoption("--pplgate-report", default=None, metavar="DIR", help="write JSON/Markdown/PNG reports into DIR")
    g.addoption("--pplgate-cache-dir", default=None, metavar="DIR", help="quantized-model cache root")
    g.addoption("--pplgate-cache", default="use", choices=["use", "refresh", "off"], help="quantized-model cache mode")
    g.addoption(
        "--pplgate-dataset",
        default=None,
        metavar="PATH",
        help="WikiText-2 test split (else $PPLGATE_WIKITEXT, then ../shared beside the checkout, then the hub)",
    )
    g.addoption("--pplgate-device", default=None, help="run every profile on this device (cpu, cuda, cuda:N)")
    g.addoption(
        "--pplgate-max-windows",
        type=int,
        default=None,
        metavar="K",
        help="score only K windows (quick local runs; compared with the first K recorded windows, marked partial)",
    )
    g.addoption(
        "--pplgate-gpus-per-worker",
        type=int,
        default=int(os.environ.get(GPUS_PER_WORKER_ENV, "1")),
        metavar="K",
        help="with pytest-xdist (-n N --dist loadgroup): each worker keeps K GPUs of the visible ones "
        f"(default 1, or ${GPUS_PER_WORKER_ENV})",
    )
    parser.addini("pplgate_baselines_dir", "directory of baseline YAML files, relative to rootdir", default="baselines")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput and workerinput.get("pplgate_gpu_ids"):
        # an xdist worker: keep only this worker's GPUs, before anything touches CUDA here
        pin_worker(
            workerinput["workerid"],
            int(workerinput["workercount"]),
            workerinput["pplgate_gpu_ids"].split(","),
            int(workerinput["pplgate_gpus_per_worker"]),
        )
    config.addinivalue_line("markers", "pplgate: a pplgate perplexity gate test (collected from baselines/*.yaml)")
    config.addinivalue_line("markers", "gpu: GPU tier of the gate (skips where no CUDA device exists)")
    config.addinivalue_line("markers", "smoke: CPU tier of the gate (a few windows, runs everywhere)")
    config.addinivalue_line("markers", "xdist_group(name): keep tests of one model on one pytest-xdist worker")
    validate_options(config)
    config.stash[GATE_KEY] = GateSession(config)


def _gate(config: pytest.Config) -> GateSession:
    return config.stash[GATE_KEY]


# --------------------------------------------------------------------------- collection


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    """Every ``*.yaml``/``*.yml`` (any case) under the baselines dir, sub-directories and symlinks included.

    A file reached twice (a symlink beside its target) is collected once, under the first path seen.
    """
    if file_path.suffix.lower() not in (".yaml", ".yml"):
        return None
    gate = _gate(parent.config)
    if not gate.is_baseline_file(file_path):
        return None
    real = os.path.realpath(file_path)
    if gate.collected_files.setdefault(real, file_path) != file_path:
        return None
    return BaselineFile.from_parent(parent, path=file_path)


class BaselineFile(pytest.File):
    """A ``baselines/<model>.yaml`` file; yields one :class:`GateItem` per profile and variant."""

    def collect(self):
        from pplgate.errors import VariantError
        from pplgate.models.registry import make_variant
        from pplgate.models.source import resolve_source

        spec = parse_baseline(self.path, known_kinds=_known_kinds())
        try:
            source = resolve_source(spec.resolve_path(spec.model.source), spec.model.gguf_file, spec.model.revision)
        except PplgateError as exc:
            raise BaselineError(self.path, "model.source", str(exc)) from exc
        tokenizer = spec.resolve_path(spec.model.tokenizer)
        if tokenizer and tokenizer.startswith("/") and not Path(tokenizer).exists():
            raise BaselineError(self.path, "model.tokenizer", f"tokenizer path {tokenizer} does not exist")
        names: dict[str, str] = {}
        for profile in spec.profiles.values():
            for vs in profile.variants.values():
                keypath = f"profiles.{profile.name}.variants.{vs.name}"
                try:
                    make_variant(vs.kind, vs.params)
                except VariantError as exc:
                    raise BaselineError(self.path, keypath, str(exc)) from exc
                name = f"{spec.model.name}[{profile.name}-{vs.name}]"
                if name in names:
                    raise BaselineError(
                        self.path,
                        keypath,
                        f"test id {name} is also the id of {names[name]}: rename the profile or the variant "
                        "so that '<profile>-<variant>' differs",
                        vs.line,
                    )
                names[name] = keypath
                yield GateItem.from_parent(
                    self,
                    name=name,
                    spec=spec,
                    profile=profile,
                    variant=vs,
                    source=source,
                    tokenizer=tokenizer,
                )

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, PplgateError):
            return f"invalid baseline file: {excinfo.value}"
        return super().repr_failure(excinfo)


class GateItem(pytest.Item):
    """One gate test: measure a variant, check protocol fingerprint and tolerance rules."""

    def __init__(self, *, spec: BaselineSpec, profile: ProfileSpec, variant: EntrySpec, source, tokenizer, **kw):
        super().__init__(**kw)
        self.spec, self.profile, self.variant = spec, profile, variant
        self.source, self.tokenizer_ref = source, tokenizer
        self.record: GateRecord | None = None
        self.add_marker("pplgate")
        self.add_marker(profile.marker)
        self.add_marker(pytest.mark.xdist_group(name=spec.model.name))

    @property
    def device(self) -> str:
        return self.config.getoption("--pplgate-device") or self.profile.device

    def setup(self) -> None:
        """Skip without CUDA for a cuda profile; without any copy of the dataset, skip outside CI.

        The dataset is looked up here, before any model loads. Not found: outside CI the entry skips
        with the reason; under CI (``$CI`` true or ``PPLGATE_REQUIRE_SHARED=1``) it fails in the call
        phase with the same reason. Other dataset errors (hash mismatch, corrupt file) fail there too.
        """
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                pytest.skip(CUDA_SKIP)
        from pplgate.errors import DatasetNotFound
        from pplgate.locate import inputs_required

        try:
            _gate(self.config).measurer.text()
        except DatasetNotFound as exc:
            if not inputs_required():
                pytest.skip(str(exc))
        except PplgateError:
            pass  # reported as this entry's failure when runtest loads the dataset again

    def runtest(self) -> None:
        gate = _gate(self.config)
        try:
            gate.run_item(self)
        finally:
            if self.record is not None:
                for key, value in reports.junit_properties(self.record):
                    self.user_properties.append((key, value))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, GateFailure):
            return str(excinfo.value)
        if isinstance(excinfo.value, PplgateError):
            return f"pplgate: {self.name}: {type(excinfo.value).__name__}: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, self.variant.line, f"pplgate {self.name}"


# --------------------------------------------------------------------------- session state


@dataclass
class GateSession:
    """The session's :class:`~pplgate.measure.Measurer` (text, tokens, models, measurements) and collected results."""

    config: pytest.Config
    _measurer: Measurer | None = field(default=None, repr=False)
    order: list = field(default_factory=list)
    records: list = field(default_factory=list)
    updates: dict = field(default_factory=dict)
    nongate_failures: int = 0
    collect_errors: int = 0
    baseline_collect_errors: int = 0
    update_rows: list = field(default_factory=list)
    update_blocked: str | None = None
    write_errors: list = field(default_factory=list)
    report_paths: list = field(default_factory=list)
    collected_files: dict = field(default_factory=dict)  # realpath -> the path it was collected under
    report_notes: list = field(default_factory=list)

    # ---- configuration
    @property
    def update(self) -> bool:
        return bool(self.config.getoption("--update-baselines"))

    @property
    def force(self) -> bool:
        return bool(self.config.getoption("--force-update"))

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    def baselines_dir(self) -> Path:
        opt = self.config.getoption("--baselines-dir")
        if opt:
            return Path(opt).expanduser().resolve()
        return (self.config.rootpath / self.config.getini("pplgate_baselines_dir")).resolve()

    def is_baseline_file(self, path: Path) -> bool:
        """``path`` lies under the baselines dir (as named: a symlink there counts, wherever it points)."""
        try:
            Path(os.path.abspath(path)).relative_to(self.baselines_dir())
        except (ValueError, OSError):
            return False
        return True

    # ---- measuring: one Measurer per session
    @property
    def measurer(self) -> Measurer:
        """Created on first use from the plugin's options (``--pplgate-dataset``, ``--pplgate-cache*``, ``-s``)."""
        if self._measurer is None:
            from pplgate.locate import REQUIRE_ENV, inputs_required
            from pplgate.measure import Measurer

            opt = self.config.getoption
            self._measurer = Measurer(
                dataset=opt("--pplgate-dataset"),
                dataset_option="--pplgate-dataset",
                cache_dir=opt("--pplgate-cache-dir"),
                cache_mode=opt("--pplgate-cache"),
                progress=opt("capture") == "no",  # visible with -s
                missing_dataset_note=(
                    f"(under CI, $CI true or {REQUIRE_ENV}=1, a missing dataset fails; outside CI these entries skip)"
                    if inputs_required()
                    else None
                ),
            )
        return self._measurer

    def max_windows(self, profile: ProfileSpec) -> int | None:
        override = self.config.getoption("--pplgate-max-windows")
        return profile.max_windows if override is None else override

    def measure(self, item: GateItem, variant: EntrySpec) -> Measurement:
        """Measure ``variant`` of ``item``'s profile once per session (relational refs reuse it)."""
        return self.measurer.measure(
            item.source,
            kind=variant.kind,
            params=variant.params,
            device=item.device,
            tokenizer=item.tokenizer_ref,
            seqlen=item.profile.seqlen,
            batch_size=item.profile.batch_size,
            max_windows=self.max_windows(item.profile),
            device_map=item.profile.device_map,
            label=f"{item.source.short_name()} {variant.name}",
        )

    # ---- the test itself
    def run_item(self, item: GateItem) -> None:
        """Measure the entry (and the entries its relational rules name), judge, raise a failing verdict."""
        from pplgate import provenance

        profile, entry = item.profile, item.variant
        override = self.config.getoption("--pplgate-max-windows")
        refusal = partial_update_refusal(override, profile.name, profile.max_windows) if self.update else None
        if refusal:
            raise PplgateError(refusal)
        item.record = _base_record(item, Status.ERROR)
        m = self.measure(item, entry)
        r = m.result
        prov = provenance.collect(
            device=r.device,
            rootdir=self.config.rootpath,
            wall_time_s=r.wall_time_s,
            prepare_time_s=m.prepare_time_s,
            origin=m.origin,
            args=list(self.config.invocation_params.args),
            extra={"batch_size": r.batch_size, "tokens_per_s": round(r.tokens_per_s, 1), **m.extra},
        )
        measured = Measured(
            ppl=r.ppl,
            window_nlls=list(r.window_nlls),
            n_windows=r.n_windows,
            n_windows_total=r.n_windows_total,
            fingerprint=m.fingerprint,
            origin=m.origin,
            wall_time_s=r.wall_time_s,
            prepare_time_s=m.prepare_time_s,
        )
        target, partial = _target(item), is_partial(override, profile.max_windows)
        item.record = measured_record(target, entry, measured, partial)  # what an error report shows
        # relational rules compare with entries measured in this session
        session_ppls = {ref: self.measure(item, profile.variants[ref]).result.ppl for ref in entry.refs}
        item.record = judge(
            target,
            entry,
            measured,
            session_ppls=session_ppls,
            update=self.update,
            force=self.force,
            partial=partial,
            provenance=prov,
        )
        if item.record.message is not None:
            raise GateFailure(item.record.message, item.record.status)


# --------------------------------------------------------------------------- hooks


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Group gate items per (file, profile) and put relational references before their users."""
    slots = [i for i, it in enumerate(items) if isinstance(it, GateItem)]
    groups: OrderedDict = OrderedDict()
    for i in slots:
        it = items[i]
        groups.setdefault((str(it.spec.path), it.profile.name), []).append(it)
    ordered: list = []
    for group in groups.values():
        by_name = {it.variant.name: it for it in group}
        done: set = set()

        def visit(it, by_name=by_name, done=done):
            if it.variant.name in done:
                return
            done.add(it.variant.name)
            for ref in it.variant.refs:
                if ref in by_name:
                    visit(by_name[ref])
            ordered.append(it)

        for it in group:
            visit(it)
    for i, it in zip(slots, ordered, strict=True):
        items[i] = it
    _gate(config).order = [it for it in items if isinstance(it, GateItem)]


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem) -> None:
    """Free models no later gate item needs (GPU memory)."""
    if not isinstance(item, GateItem):
        return
    gate = _gate(item.config)
    try:
        pos = gate.order.index(item)
    except ValueError:
        return
    keep = {(it.source, it.device) for it in gate.order[pos + 1 :]}
    gate.measurer.free(keep)


def _target(item: GateItem) -> Target:
    return Target(
        nodeid=item.nodeid,
        name=item.name,
        file=str(item.spec.path),
        model=item.spec.model.name,
        source=item.source.describe(),
        profile=item.profile.name,
        device=item.device,
        seqlen=item.profile.seqlen,
    )


def _base_record(item: GateItem, status: Status) -> GateRecord:
    """The result record of a gate test before anything is measured."""
    return new_record(_target(item), item.variant, status)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Attach the record to the report; a skip or an error (in setup or call) records its reason."""
    rep = yield
    if not isinstance(item, GateItem) or rep.when not in ("setup", "call"):
        return rep
    exc = call.excinfo.value if call.excinfo is not None else None
    if rep.failed:
        rep.pplgate_gate_failure = isinstance(exc, GateFailure)
    rec = item.record if rep.when == "call" else None
    if rep.skipped:
        rec = rec or _base_record(item, Status.SKIPPED)
        rec.mark_skipped(str(getattr(exc, "msg", None) or exc or ""))
    elif rep.failed and not isinstance(exc, GateFailure):
        rec = rec or _base_record(item, Status.ERROR)
        rec.mark_error(f"{type(exc).__name__}: {exc}" if exc is not None else str(rep.longrepr))
    if rec is not None:
        rep.pplgate = rec.to_dict()  # plain data: the report travels from an xdist worker to the controller
    return rep


def _on_report(config: pytest.Config, report) -> None:
    gate = _gate(config)
    data = getattr(report, "pplgate", None)
    if isinstance(data, dict):
        rec = GateRecord.from_dict(data)
        gate.records.append(rec)
        if rec.update is not None and rec.status.queued:
            gate.updates.setdefault(rec.file, []).append(rec.update)
    if report.failed and not getattr(report, "pplgate_gate_failure", False):
        gate.nongate_failures += 1


class _ReportHooks:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report) -> None:
        _on_report(self.config, report)

    def pytest_collectreport(self, report) -> None:
        if report.failed:
            gate = _gate(self.config)
            gate.collect_errors += 1
            if str(report.nodeid).endswith((".yaml", ".yml")):
                gate.baseline_collect_errors += 1


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.pluginmanager.register(_ReportHooks(session.config), "pplgate-report-hooks")


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """A malformed baseline file is a collection error of that file; the other files still run."""
    gate = _gate(session.config)
    if (
        session.testsfailed
        and session.testsfailed == gate.baseline_collect_errors
        and not session.config.option.continue_on_collection_errors
    ):
        session.config.option.continue_on_collection_errors = True


def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    gate = _gate(session.config)
    if gate.is_worker:
        return  # the controller writes files and reports for the whole run
    if gate.update and gate.updates:
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            gate.update_blocked = "the session was interrupted"
        elif gate.nongate_failures or gate.collect_errors:
            gate.update_blocked = (
                f"{gate.nongate_failures} test(s) failed or errored for a non-gate reason and "
                f"{gate.collect_errors} collection error(s) occurred"
            )
        else:
            _write_updates(session, gate)
        if gate.update_blocked:
            _mark_not_written(gate, gate.update_blocked)
    report_dir = session.config.getoption("--pplgate-report")
    if gate.records and (report_dir or os.environ.get("GITHUB_STEP_SUMMARY")):
        written = reports.write_reports(
            report_dir, gate.records, gate.update_rows, gate.update_blocked, rootdir=session.config.rootpath
        )
        gate.report_paths, gate.report_notes = written.paths, written.notes


def _write_updates(session: pytest.Session, gate: GateSession) -> None:
    """Write the queued updates file by file; a file that cannot be written fails the session."""
    for path, entries in gate.updates.items():
        try:
            rows = write_updates(path, entries)
        except (OSError, PplgateError) as exc:
            reason = f"writing {reports.relpath(path, session.config.rootpath)} failed: {type(exc).__name__}: {exc}"
            gate.write_errors.append(reason)
            _mark_not_written(gate, reason, path)
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            continue
        for row in rows:
            row["file"] = path
            if not row.get("applied", True):
                _mark_not_written(gate, "the entry is no longer in the file", path, (row["profile"], row["variant"]))
        gate.update_rows.extend(rows)


def _mark_not_written(gate: GateSession, reason: str, path: str | None = None, entry: tuple | None = None) -> None:
    """Records queued as created/updated whose write did not happen say so (status ``not_written``)."""
    for rec in gate.records:
        if not rec.status.queued or rec.update is None:
            continue
        if (path is None or rec.file == path) and (entry is None or (rec.profile, rec.variant) == entry):
            rec.mark_not_written(reason)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    gate = _gate(config)
    if gate.is_worker or not gate.records:
        return
    tr = terminalreporter
    tr.write_sep("=", "pplgate perplexity gate")
    for line in reports.terminal_table(gate.records):
        tr.write_line(line)
    if gate.update:
        if gate.update_blocked:
            tr.write_line(f"pplgate: NOT writing baseline updates: {gate.update_blocked}.", red=True, bold=True)
        for err in gate.write_errors:
            tr.write_line(f"pplgate: baseline updates NOT written: {err}", red=True, bold=True)
        if gate.update_rows:
            tr.write_sep("-", "pplgate baseline updates (old -> new)")
            for line in reports.update_table(gate.update_rows, config.rootpath):
                tr.write_line(line)
        elif not gate.updates:
            tr.write_line("pplgate: --update-baselines: nothing to write")
    for p in gate.report_paths:
        tr.write_line(f"pplgate report: {p}")
    for note in gate.report_notes:
        tr.write_line(f"pplgate: {note}", yellow=True)


# --------------------------------------------------------------------------- pytest-xdist: one worker per GPU


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """Controller side: hand each worker the visible GPU list; the worker pins itself (see configure)."""
    gpu_ids = visible_gpu_ids()
    k = node.config.getoption("--pplgate-gpus-per-worker")
    if not gpu_ids:
        return  # CPU-only run: nothing to pin
    n_workers = int(node.workerinput.get("workercount") or node.config.option.numprocesses)
    assign_gpus(0, n_workers, gpu_ids, k)  # fail in the controller, with the fix, if there are too few
    node.workerinput["pplgate_gpu_ids"] = ",".join(gpu_ids)
    node.workerinput["pplgate_gpus_per_worker"] = k

"""The gate's session: one Measurer, the records the reports show, the update queue written in :meth:`finish`."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pplgate.errors import PplgateError
from pplgate.gate import reports
from pplgate.gate.record import GateRecord, Status
from pplgate.gate.spec import EntrySpec, ProfileSpec
from pplgate.gate.store import NLL_DECIMALS, PPL_DECIMALS, EntryUpdate, write_updates
from pplgate.gate.verdict import (
    Measured,
    Target,
    is_partial,
    judge,
    measured_record,
    new_record,
    partial_update_refusal,
)
from pplgate.pytest_plugin import references
from pplgate.pytest_plugin.items import GATE_KEY, GateFailure, GateItem

if TYPE_CHECKING:
    from pplgate.measure import Measurement, Measurer


def gate_of(config: pytest.Config) -> GateSession:
    """The session's :class:`GateSession` (the plugin stashes one per pytest config)."""
    gate = config.stash[GATE_KEY]
    assert isinstance(gate, GateSession)
    return gate


def target_of(item: GateItem) -> Target:
    """What the verdict needs to know about the test item."""
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


def base_record(item: GateItem, status: Status) -> GateRecord:
    """The result record of a gate test before anything is measured."""
    return new_record(target_of(item), item.variant, status)


def with_recorded_device_type(entry: EntrySpec, profile_device: str) -> EntrySpec:
    """Entries recorded before the fingerprint held ``device_type`` were measured on the profile's device."""
    fp = entry.fingerprint
    if fp is None or "device_type" in fp:
        return entry
    return dataclasses.replace(entry, fingerprint={**fp, "device_type": profile_device.split(":")[0]})


@dataclass
class GateSession:
    """The session's :class:`~pplgate.measure.Measurer` (text, tokens, models, measurements) and collected results."""

    config: pytest.Config
    _measurer: Measurer | None = field(default=None, repr=False)
    order: list[GateItem] = field(default_factory=list)
    records: list[GateRecord] = field(default_factory=list)
    updates: dict[str, list[EntryUpdate]] = field(default_factory=dict)
    nongate_failures: int = 0
    collect_errors: int = 0
    baseline_collect_errors: int = 0
    update_rows: list[dict[str, Any]] = field(default_factory=list)
    update_blocked: str | None = None
    write_errors: list[str] = field(default_factory=list)
    report_error: str | None = None
    report_paths: list[str] = field(default_factory=list)
    collected_files: dict[str, Path] = field(default_factory=dict)  # realpath -> the path it was collected under
    report_notes: list[str] = field(default_factory=list)
    all_skipped_under_ci: bool = False
    comparisons: dict[tuple[str, str, str], Any] = field(default_factory=dict)  # (file, profile, entry) -> pass

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
                noncanonical_option=None,  # the gate compares canonical numbers only
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

    def free_after(self, item: GateItem) -> None:
        """Free the models no later gate item needs (GPU memory)."""
        try:
            pos = self.order.index(item)
        except ValueError:
            return
        self.measurer.free({(it.source, it.device) for it in self.order[pos + 1 :]})

    # ---- the test itself
    def run_item(self, item: GateItem) -> None:
        """Measure the entry (and the entries its relational rules name), judge, raise a failing verdict."""
        from pplgate import provenance

        profile = item.profile
        entry = with_recorded_device_type(item.variant, profile.device)
        override = self.config.getoption("--pplgate-max-windows")
        refusal = partial_update_refusal(override, profile.name, profile.max_windows) if self.update else None
        if refusal:
            raise PplgateError(refusal)
        item.record = base_record(item, Status.ERROR)
        ref = references.run(self, item, entry)  # a reference's shared pass first: its PPLs serve measure()
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
            fingerprint=ref.fingerprint(m.fingerprint) if ref else m.fingerprint,
            origin=m.origin,
            wall_time_s=r.wall_time_s,
            prepare_time_s=m.prepare_time_s,
            kld=ref.kld if ref else None,
        )
        target, partial = target_of(item), is_partial(override, profile.max_windows)
        item.record = measured_record(target, entry, measured, partial)  # what an error report shows
        # relational rules compare with entries measured in this session
        session_ppls = {ref: self.measure(item, profile.variants[ref]).result.ppl for ref in entry.refs}
        item.record = judge(
            target,
            entry,
            measured,
            session_ppls=session_ppls,
            session_values=ref.session_values if ref else None,
            update=self.update,
            force=self.force,
            partial=partial,
            provenance=prov,
        )
        if item.record.message is not None:
            raise GateFailure(item.record.message, item.record.status)

    # ---- reports from the items (on the controller, from every xdist worker)
    def on_report(self, report: pytest.TestReport) -> None:
        data = getattr(report, "pplgate", None)
        if isinstance(data, dict):
            rec = GateRecord.from_dict(data)
            self.records.append(rec)
            if rec.update is not None and rec.status.queued:
                self.updates.setdefault(rec.file, []).append(rec.update)
        if report.failed and not getattr(report, "pplgate_gate_failure", False):
            self.nongate_failures += 1

    def on_collect_report(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collect_errors += 1
            if str(report.nodeid).lower().endswith((".yaml", ".yml")):
                self.baseline_collect_errors += 1

    # ---- the end of the session: writes, then reports
    def finish(self, session: pytest.Session, exitstatus: int) -> None:
        """Write the queued updates (unless blocked), fail an all-skipped gate under CI, write the reports."""
        if self.is_worker:
            return  # the controller writes files and reports for the whole run
        if self.update and self.updates:
            if exitstatus == pytest.ExitCode.INTERRUPTED:
                self.update_blocked = "the session was interrupted"
            elif self.nongate_failures or self.collect_errors:
                self.update_blocked = (
                    f"{self.nongate_failures} test(s) failed or errored for a non-gate reason and "
                    f"{self.collect_errors} collection error(s) occurred"
                )
            else:
                self._write_updates(session)
            if self.update_blocked:
                self._mark_not_written(self.update_blocked)
        self._fail_if_everything_skipped_under_ci(session)
        report_dir = session.config.getoption("--pplgate-report")
        if self.records and (report_dir or os.environ.get("GITHUB_STEP_SUMMARY")):
            try:
                written = reports.write_reports(
                    report_dir, self.records, self.update_rows, self.update_blocked, rootdir=session.config.rootpath
                )
            except Exception as exc:  # the measuring is done: say so, keep the summary, fail the session
                where = f"into {report_dir}" if report_dir else "to $GITHUB_STEP_SUMMARY"
                self.report_error = f"writing the reports {where} failed: {type(exc).__name__}: {exc}"
                _fail(session)
            else:
                self.report_paths, self.report_notes = written.paths, written.notes

    def _fail_if_everything_skipped_under_ci(self, session: pytest.Session) -> None:
        """Under CI a gate whose every collected entry was skipped has measured nothing: that is not green."""
        from pplgate.locate import inputs_required

        if not self.records or not inputs_required():
            return
        if all(rec.status == Status.SKIPPED for rec in self.records):
            self.all_skipped_under_ci = True
            _fail(session)

    def _write_updates(self, session: pytest.Session) -> None:
        """Write the queued updates file by file; a file that cannot be written fails the session."""
        for path, entries in self.updates.items():
            try:
                rows = write_updates(path, entries)
            except Exception as exc:  # OSError, PplgateError, or anything else: never lose the summary
                reason = f"writing {reports.relpath(path, session.config.rootpath)} failed: {type(exc).__name__}: {exc}"
                self.write_errors.append(reason)
                self._mark_not_written(reason, path)
                _fail(session)
                continue
            for row in rows:
                row["file"] = path
                if not row.get("applied", True):
                    self._mark_not_written("the entry is no longer in the file", path, (row["profile"], row["variant"]))
            self.update_rows.extend(rows)

    def _mark_not_written(self, reason: str, path: str | None = None, entry: tuple[str, str] | None = None) -> None:
        """Records queued as created/updated whose write did not happen say so (status ``not_written``)."""
        for rec in self.records:
            if not rec.status.queued or rec.update is None:
                continue
            if (path is None or rec.file == path) and (entry is None or (rec.profile, rec.variant) == entry):
                rec.mark_not_written(reason)

    def summary(self, tr: Any) -> None:
        """The gate's table, update rows and report paths at the end of the terminal output."""
        if self.is_worker or not self.records:
            return
        tr.write_sep("=", "pplgate perplexity gate")
        for line in reports.terminal_table(self.records):
            tr.write_line(line)
        if self.all_skipped_under_ci:
            tr.write_line(
                "pplgate: every gate entry was skipped under CI, so nothing was measured: failing the session "
                "(see the SKIP reasons above)",
                red=True,
                bold=True,
            )
        if self.update:
            if self.update_blocked:
                tr.write_line(f"pplgate: NOT writing baseline updates: {self.update_blocked}.", red=True, bold=True)
            for err in self.write_errors:
                tr.write_line(f"pplgate: baseline updates NOT written: {err}", red=True, bold=True)
            for line in not_written_lines(self.records, self.config.rootpath):
                tr.write_line(line)
            if self.update_rows:
                tr.write_sep("-", "pplgate baseline updates (old -> new)")
                for line in reports.update_table(self.update_rows, self.config.rootpath):
                    tr.write_line(line)
            elif not self.updates:
                tr.write_line("pplgate: --update-baselines: nothing to write")
        if self.report_error:
            tr.write_line(f"pplgate: {self.report_error}", red=True, bold=True)
        for p in self.report_paths:
            tr.write_line(f"pplgate report: {p}")
        for note in self.report_notes:
            tr.write_line(f"pplgate: {note}", yellow=True)


def _fail(session: pytest.Session) -> None:
    """A session that would pass fails (its exit status says what went wrong at its end)."""
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def not_written_lines(records: list[GateRecord], rootdir: Path) -> list[str]:
    """The measured numbers of every update that was not written, as the file would have held them."""
    out = []
    for rec in records:
        if rec.status != Status.NOT_WRITTEN or rec.update is None:
            continue
        u = rec.update
        nlls = ", ".join(f"{x:.{NLL_DECIMALS}f}" for x in u.window_nlls)
        out.append(
            f"pplgate: measured, not written: {reports.relpath(rec.file or '', rootdir)} :: {u.profile}/{u.variant}: "
            f"ppl {u.ppl:.{PPL_DECIMALS}f} over {len(u.window_nlls)} windows, window NLLs [{nlls}]"
        )
    return out


def attach_record(item: pytest.Item, call: pytest.CallInfo[None], rep: pytest.TestReport) -> None:
    """Put the item's record on its report; a skip or an error (in setup or call) records its reason."""
    if not isinstance(item, GateItem) or rep.when not in ("setup", "call"):
        return
    exc = call.excinfo.value if call.excinfo is not None else None
    if rep.failed:
        rep.pplgate_gate_failure = isinstance(exc, GateFailure)  # type: ignore[attr-defined]
    rec = item.record if rep.when == "call" else None
    if rep.skipped:
        rec = rec or base_record(item, Status.SKIPPED)
        rec.mark_skipped(str(getattr(exc, "msg", None) or exc or ""))
    elif rep.failed and not isinstance(exc, GateFailure):
        rec = rec or base_record(item, Status.ERROR)
        rec.mark_error(f"{type(exc).__name__}: {exc}" if exc is not None else str(rep.longrepr))
    if rec is not None:
        rep.pplgate = rec.to_dict()  # type: ignore[attr-defined]  # plain data: travels from xdist workers

"""The gate's session: one Measurer, the records the reports show, the update queue written in :meth:`finish`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pplgate.errors import PplgateError
from pplgate.gate import reports
from pplgate.gate.kld import reference_name
from pplgate.gate.record import GateRecord, Status
from pplgate.gate.spec import EntrySpec, ProfileSpec
from pplgate.gate.store import EntryUpdate, write_updates
from pplgate.gate.verdict import Target, is_partial, judge, partial_update_refusal, values_of
from pplgate.pytest_plugin.items import GATE_KEY, GateFailure, GateItem
from pplgate.pytest_plugin.records import (
    base_record,
    measured_of,
    not_written_lines,
    target_of,
    with_recorded_device_type,
)

if TYPE_CHECKING:
    from pplgate.measure import Measurement, Measurer


def gate_of(config: pytest.Config) -> GateSession:
    """The session's :class:`GateSession` (the plugin stashes one per pytest config)."""
    gate = config.stash[GATE_KEY]
    assert isinstance(gate, GateSession)
    return gate


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
    all_skipped_under_ci: str = ""  # why every entry skipped, when that fails the session
    # ppl_regression.check on this worker: (file, entry) -> the test that checked it, and its ppl
    checked: dict[tuple[str, str], str] = field(default_factory=dict)
    checked_measured: dict[tuple[str, str], Any] = field(default_factory=dict)  # ... and its Measurement
    checked_by: dict[tuple[str, str], str] = field(default_factory=dict)  # the controller's view of the checks
    check_conflicts: list[str] = field(default_factory=list)  # one entry checked by two tests
    conflicting: set[tuple[str, str]] = field(default_factory=set)  # (file, entry) of those: never written
    # (file, profile) -> {entry: its Measurement, or the exception measuring it raised}
    measured: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

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

    @property
    def max_windows_override(self) -> int | None:
        """``--pplgate-max-windows``."""
        return self.config.getoption("--pplgate-max-windows")

    def max_windows(self, profile: ProfileSpec) -> int | None:
        override = self.config.getoption("--pplgate-max-windows")
        return profile.max_windows if override is None else override

    def profile(self, item: GateItem) -> dict[str, Any]:
        """``{entry: Measurement or exception}`` of ``item``'s profile: every entry this session needs there (its
        items, and the entries their rules name), measured in one call (:func:`pplgate.profile.measure_profile`)
        when the profile's first item runs."""
        from pplgate.measurement import ProfileRequest
        from pplgate.profile import measure_profile

        have = self.measured.setdefault((str(item.spec.path), item.profile.name), {})
        names: set[str] = set()
        for other in getattr(item.session, "items", None) or [item]:
            if getattr(other, "spec", None) is item.spec and getattr(other, "profile", None) is item.profile:
                names |= {other.variant.name, *other.variant.refs}
        if names - have.keys():
            p = item.profile
            request = ProfileRequest(
                source=item.source,
                device=item.device,
                entries=list(p.variants.values()),
                tokenizer=item.tokenizer_ref,
                seqlen=p.seqlen,
                batch_size=p.batch_size,
                max_windows=self.max_windows(p),
                device_map=p.device_map,
                compare_group=self.config.getoption("--pplgate-compare-group"),
            )
            have.update(measure_profile(self.measurer, request, names - have.keys()))
        return have

    def free_after(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        """Free the models no later gate item needs (GPU memory): after a gate item, and after the last test
        of an xdist group of tests using the ppl_* fixtures (a model's tests: its models are done). Not after
        this process's last test: nothing needs the memory, and a worker's last collection delayed its report."""
        if nextitem is None:
            return
        if not isinstance(item, GateItem):
            if self._measurer is None or (nextitem is not None and _group(nextitem) == _group(item)):
                return
            rest = item.session.items[item.session.items.index(nextitem) :] if nextitem in item.session.items else []
            self.measurer.free({(it.source, it.device) for it in rest if isinstance(it, GateItem)})
            return
        try:
            pos = self.order.index(item)
        except ValueError:
            return
        self.measurer.free({(it.source, it.device) for it in self.order[pos + 1 :]})

    # ---- the test itself
    def refuse_partial_update(self, profile_name: str, profile_max_windows: int | None) -> None:
        """``--update-baselines`` with a ``--pplgate-max-windows`` other than the entry's: an error."""
        override = self.config.getoption("--pplgate-max-windows")
        refusal = partial_update_refusal(override, profile_name, profile_max_windows) if self.update else None
        if refusal:
            raise PplgateError(refusal)

    def run_item(self, item: GateItem) -> None:
        """Judge the entry from its profile's measurements (its own and those its rules name); raise a failure."""
        profile = item.profile
        entry = with_recorded_device_type(item.variant, profile.device)
        self.refuse_partial_update(profile.name, profile.max_windows)
        item.record = base_record(item, Status.ERROR)
        measured = self.profile(item)
        for name in (entry.name, *entry.refs):
            if isinstance(measured.get(name), BaseException):
                raise measured[name]  # this entry's own failure, or that of an entry its rules compare with
        others = {ref: measured_of(measured[ref], reference_name(profile.variants[ref])) for ref in entry.refs}
        item.record = self.verdict(target_of(item), entry, measured[entry.name], others, profile.max_windows)
        if item.record.message is not None:
            raise GateFailure(item.record.message, item.record.status)

    def verdict(
        self,
        target: Target,
        entry: EntrySpec,
        m: Measurement,
        others: Mapping[str, Any],
        profile_max_windows: int | None,
        *,
        update: bool | None = None,
    ) -> GateRecord:
        """:func:`~pplgate.gate.verdict.judge` on a measurement, with this session's options and provenance
        (one path for collected entries and ``ppl_regression.check``); ``others``: the ``Measured`` of the entries
        its rules name."""
        from pplgate import provenance

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
        return judge(
            target,
            entry,
            measured_of(m, reference_name(entry)),
            others=values_of(others),
            update=self.update if update is None else update,
            force=self.force,
            partial=is_partial(self.config.getoption("--pplgate-max-windows"), profile_max_windows),
            provenance=prov,
        )

    # ---- reports from the items (on the controller, from every xdist worker)
    def on_report(self, report: pytest.TestReport) -> None:
        data = getattr(report, "pplgate", None)
        for d in [data] if isinstance(data, dict) else getattr(report, "pplgate_checks", None) or []:
            rec = GateRecord.from_dict(d)
            if not isinstance(data, dict):  # a check: one name once per session, across xdist workers too
                first = self.checked_by.setdefault((rec.file or "", rec.variant or ""), rec.nodeid)
                if first != rec.nodeid:
                    self.check_conflicts.append(
                        f"entry tests.{rec.variant} of {rec.file} was checked by {first} and by {rec.nodeid} "
                        "(on different xdist workers): give the checks different names; nothing written for it"
                    )
                    self.conflicting.add((rec.file or "", rec.variant or ""))
            self.records.append(rec)
            if rec.update is not None and (rec.status.queued or rec.status == Status.MISSING):
                self.updates.setdefault(rec.file or "", []).append(rec.update)
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
        if self.check_conflicts:
            _fail(session)
            for path, name in self.conflicting:
                kept = [u for u in self.updates.pop(path, []) if (u.section, u.variant) != ("tests", name)]
                if kept:
                    self.updates[path] = kept
                self._mark_not_written("checked by two tests", path, ("tests", name))
        # without --update-baselines only ppl_regression's first recordings are queued (written, as
        # pytest-regressions does, whatever else failed: they replace nothing)
        if self.updates:
            if exitstatus == pytest.ExitCode.INTERRUPTED:
                self.update_blocked = "the session was interrupted"
            elif self.update and (self.nongate_failures or self.collect_errors):
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
        """A gate whose every entry skipped has measured nothing: not green under CI, nor anywhere for want of data."""
        from pplgate.locate import inputs_required
        from pplgate.protocol.dataset import NOT_AVAILABLE

        if self.records and all(rec.status == Status.SKIPPED for rec in self.records):
            no_data = any((rec.skip_reason or "").startswith(NOT_AVAILABLE) for rec in self.records)
            if inputs_required() or no_data:
                self.all_skipped_under_ci = "for want of the dataset (`pplgate data`)" if no_data else "under CI"
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
            if rec.update is None or not (rec.status.queued or rec.status == Status.MISSING):
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
                f"pplgate: every gate entry was skipped {self.all_skipped_under_ci}, so nothing was measured: failing "
                "the session (see the SKIP reasons above)",
                red=True,
                bold=True,
            )
        for conflict in self.check_conflicts:
            tr.write_line(f"pplgate: {conflict}", red=True, bold=True)
        if self.update or self.updates:
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
            elif self.update and not self.updates:
                tr.write_line("pplgate: --update-baselines: nothing to write")
        if self.report_error:
            tr.write_line(f"pplgate: {self.report_error}", red=True, bold=True)
        for p in self.report_paths:
            tr.write_line(f"pplgate report: {p}")
        for note in self.report_notes:
            tr.write_line(f"pplgate: {note}", yellow=True)


def _group(item: pytest.Item) -> str | None:
    """The item's ``xdist_group`` name (tests using the ppl_* fixtures get one at collection)."""
    marker = item.get_closest_marker("xdist_group")
    if marker is None:
        return None
    return str(marker.kwargs.get("name", marker.args[0] if marker.args else ""))


def _fail(session: pytest.Session) -> None:
    """A session that would pass fails (its exit status says what went wrong at its end)."""
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

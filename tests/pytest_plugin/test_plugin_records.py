"""The plugin's record bookkeeping at session end, without a pytest session (moved from test_reports)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pplgate.gate import reports
from pplgate.gate.record import GateRecord, Status
from pplgate.gate.store import EntryUpdate
from pplgate.pytest_plugin.session import GateSession


def _rec(status: str, **kw) -> dict:
    rec = {
        "nodeid": "baselines/m.yaml::m[cpu-fp32]",
        "file": "/repo/baselines/m.yaml",
        "model": "m",
        "profile": "cpu",
        "variant": "fp32",
        "status": status,
        "ppl": 10.5,
        "partial": None,
        "baseline": 10.0,
        "delta": 0.5,
        "tolerance": "±0.1",
    }
    rec.update(kw)
    return rec


def test_failed_write_marks_rows_not_written_and_fails_the_session(tmp_path):
    missing = str(tmp_path / "gone" / "m.yaml")  # cannot be read or locked
    upd = {"profile": "cpu", "variant": "fp32", "fingerprint": {}, "ppl": 1.0, "window_nlls": [0.0], "provenance": {}}
    gate = GateSession(config=None)
    gate.records = [
        GateRecord.from_dict(_rec("updated", file=missing, update=upd)),
        GateRecord.from_dict(_rec("pass", variant="x", file=missing)),
    ]
    gate.updates = {missing: [EntryUpdate.from_dict(upd)]}
    session = SimpleNamespace(config=SimpleNamespace(rootpath=tmp_path), exitstatus=pytest.ExitCode.OK)
    gate._write_updates(session)
    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED
    assert [r["status"] for r in gate.records] == ["not_written", "pass"]
    assert gate.records[0]["queued_as"] == "updated"
    assert gate.records[0]["not_written"].startswith("writing gone/m.yaml failed: ")
    assert gate.write_errors == [gate.records[0]["not_written"]] and gate.update_rows == []
    assert "NOT WRITTEN" in reports.terminal_table(gate.records)[2]


def test_reports_from_workers_become_records_and_queue_updates():
    """What an xdist worker sends (plain dicts on the report) is read back into GateRecords."""
    gate = GateSession(config=None)
    upd = EntryUpdate("cpu", "fp32", {"seqlen": 8}, 2.0, [0.69], {"date": "d"})
    sent = [
        _rec("created", update=upd.to_dict()),
        _rec("pass", variant="b"),
        _rec("fail", variant="c", rerun="pytest ..."),
        {"nodeid": "m[cpu-d]", "file": "/repo/baselines/m.yaml", "status": "error", "error": "RuntimeError: x"},
    ]
    for data, failed, gate_failure in zip(sent, [False, False, True, True], [False, False, True, False], strict=True):
        gate.on_report(SimpleNamespace(pplgate=data, failed=failed, pplgate_gate_failure=gate_failure))
    gate.on_report(SimpleNamespace(failed=True))  # a plain test that failed: no record, a non-gate failure
    assert [r.status for r in gate.records] == [Status.CREATED, Status.PASS, Status.FAIL, Status.ERROR]
    assert [r.to_dict() for r in gate.records] == sent
    assert gate.updates == {"/repo/baselines/m.yaml": [upd]}
    assert gate.nongate_failures == 2

"""Records deleted in the CRM leave the live view after a complete read, and nothing else does."""

from __future__ import annotations

import duckdb
import pytest

from crm_assets_tests.conftest import (
    Workspace,
    check_results,
    every_profile,
    materialized_metadata,
    sync_in_process,
)
from crm_simulator import CRMSimulator, Faults


def marked(ws: Workspace, table: str) -> set:
    """Ids of the rows marked deleted."""
    with duckdb.connect(str(ws.duckdb_path), read_only=True) as con:
        rows = con.execute(
            f'SELECT id FROM crm."{table}" WHERE _crm_deleted_at IS NOT NULL'
        ).fetchall()
    return {r[0] for r in rows}


def live(ws: Workspace, table: str) -> set:
    with duckdb.connect(str(ws.duckdb_path), read_only=True) as con:
        rows = con.execute(f'SELECT id FROM crm."{table}" WHERE _crm_deleted_at IS NULL').fetchall()
    return {r[0] for r in rows}


def served(simulator: CRMSimulator, table: str) -> set:
    return {r["id"] for r in simulator.records(table)}


@every_profile
def test_a_delete_is_marked_and_a_record_that_comes_back_is_unmarked(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    assert sync_in_process(checks=True).success
    assert marked(workspace, "cases") == set()
    gone = simulator.delete_records("cases", 3)
    result = sync_in_process(checks=True)
    assert result.success
    # cases are read whole on every sync: the three are marked, nothing else.
    assert marked(workspace, "cases") == set(gone)
    assert live(workspace, "cases") == served(simulator, "cases")
    metadata = materialized_metadata(result)
    assert metadata["cases"]["rows_deleted"].value == 3
    assert check_results(result)["crm/cases:deletes"] == (True, "WARN")
    # An incremental read of a paged resource cannot see deletes: nothing marked...
    contacts_gone = simulator.delete_records("contacts", 2)
    assert sync_in_process().success
    assert marked(workspace, "contacts") == set()
    # ...until a complete read, the reconcile schedule's full refresh.
    reconciled = sync_in_process(["crm/contacts"], full_refresh=True)
    assert reconciled.success
    assert marked(workspace, "contacts") == set(contacts_gone)
    assert materialized_metadata(reconciled)["contacts"]["rows_deleted"].value == 2
    # Re-created in the CRM: loaded again, live again.
    simulator.restore_records("cases", gone)
    assert sync_in_process(["crm/cases"]).success
    assert marked(workspace, "cases") == set()
    assert live(workspace, "cases") == served(simulator, "cases")


def test_rows_loaded_before_rows_had_load_ids_are_marked_like_any_other(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    """A warehouse loaded before its rows carried `_dlt_load_id` has nulls there: a complete
    read marks the ones it did not return, and no other."""
    assert sync_in_process(["crm/cases"]).success
    with duckdb.connect(str(workspace.duckdb_path)) as con:
        con.execute("UPDATE crm.cases SET _dlt_load_id = NULL")
    gone = simulator.delete_records("cases", 2)
    result = sync_in_process(["crm/cases"])
    assert result.success
    assert marked(workspace, "cases") == set(gone)
    assert live(workspace, "cases") == served(simulator, "cases")
    assert materialized_metadata(result)["cases"]["rows_deleted"].value == 2


def test_a_read_that_was_not_complete_marks_nothing(
    workspace: Workspace, simulator: CRMSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sync_in_process(["crm/leads"]).success
    simulator.delete_records("leads", 4)
    monkeypatch.setenv("CRM_REQUEST_MAX_ATTEMPTS", "2")
    simulator.faults = Faults(rate_not_json=1.0, only_resources=("leads",))
    assert not sync_in_process(["crm/leads"], full_refresh=True).success
    assert marked(workspace, "leads") == set()
    # Records that joined while paging move the total: the read is not complete either.
    simulator.faults = Faults(insert_during_paging=2, only_resources=("leads",))
    result = sync_in_process(["crm/leads"], full_refresh=True)
    assert result.success
    assert marked(workspace, "leads") == set()
    assert materialized_metadata(result)["leads"]["complete_read"].value is False


def test_a_page_that_comes_back_short_inside_the_listing_marks_nothing(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    """The CRM's total says 309 leads, but the page at 100 comes back empty: asked once more,
    a passing glitch is read whole. If it stays empty, the rest loads, the run says how many
    records were not on the pages, and none of them is taken as deleted."""
    assert sync_in_process(["crm/leads"]).success
    simulator.faults = Faults(empty_page_at=100, empty_page_times=1, only_resources=("leads",))
    once = sync_in_process(["crm/leads"], full_refresh=True)
    assert once.success
    assert simulator.faults_injected()["empty_page"] == 1
    assert materialized_metadata(once)["leads"]["complete_read"].value is True
    assert live(workspace, "leads") == served(simulator, "leads")

    simulator.faults = Faults(empty_page_at=100, only_resources=("leads",))
    always = sync_in_process(["crm/leads"], full_refresh=True)
    assert always.success
    assert simulator.faults_injected()["empty_page"] == 1 + 2  # asked twice, empty twice
    metadata = materialized_metadata(always)["leads"]
    assert metadata["records_missing_from_pages"].value == 100
    assert metadata["complete_read"].value is False
    assert marked(workspace, "leads") == set()
    assert live(workspace, "leads") == served(simulator, "leads")


def test_a_mass_delete_is_refused_in_one_line_and_marks_nothing(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    assert sync_in_process(["crm/cases"]).success
    before = workspace.count("cases")
    simulator.delete_records("cases", int(before * 0.6))
    result = sync_in_process(["crm/cases"])
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.message
    assert f"cases: a complete read would mark {int(before * 0.6):,} of {before:,} rows" in message
    assert "CRM_MAX_DELETE_SHARE=0.5" in message
    assert marked(workspace, "cases") == set()


def test_hard_mode_removes_the_rows(
    workspace: Workspace, simulator: CRMSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_DELETES", "hard")
    assert sync_in_process(["crm/cases"]).success
    simulator.delete_records("cases", 5)
    result = sync_in_process(["crm/cases"])
    assert result.success
    assert workspace.count("cases") == simulator.count("cases")
    assert {r["id"] for r in workspace.rows("cases")} == served(simulator, "cases")
    assert materialized_metadata(result)["cases"]["rows_deleted"].value == 5

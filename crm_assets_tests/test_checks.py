"""Asset checks: each one passes on good data and fails on bad data served by the simulator."""

from __future__ import annotations

import pytest
from dagster import DagsterInstance

import crm_assets
from crm_assets.api import resource_names
from crm_assets_tests.conftest import (
    SMALL_COUNTS,
    Workspace,
    check_results,
    materialized_metadata,
    sync_in_process,
)
from crm_simulator import CRMSimulator

# Dagster's metadata-bounds check on `dagster/row_count`: the table is not empty.
ROW_COUNT = "dagster_row_count_bounds_check"


def sync_with_checks(selection: list[str] | None = None):
    return sync_in_process(selection, checks=True)


def test_every_check_passes_on_good_data(workspace: Workspace, simulator: CRMSimulator) -> None:
    results = check_results(sync_with_checks())
    expected = {
        f"crm/{n}:{c}"
        for n in resource_names()
        for c in ("primary_key", ROW_COUNT, "schema_drift", "column_schema_change", "deletes")
    }
    expected |= {f"crm/{n}:references" for n in ("contacts", "cases", "leads", "opportunities")}
    assert set(results) == expected
    assert {k for k, (passed, _) in results.items() if not passed} == set()


def test_records_without_id_load_the_rest_and_fail_the_run(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    ids = [r["id"] for r in simulator.records("customers")]
    simulator.set_field("customers", ids[9], "id", None)
    simulator.set_field("customers", ids[11], "id", ids[10])
    result = sync_with_checks()
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.message
    served = SMALL_COUNTS["customers"]
    assert f"customers: 1 of {served} records have no id; loaded {served - 1}" in message
    # Everything else landed: the other resources whole, customers but the record without id
    # (and the id served twice, merged into one row).
    rows = workspace.rows("customers")
    assert len(rows) == served - 2
    assert all(workspace.count(n) == simulator.count(n) for n in ("contacts", "leads"))
    customers = materialized_metadata(result)["customers"]
    assert customers["records_without_id"].value == 1
    assert customers["duplicate_ids"].value == 1
    # The checks of the next check run say it too, as a failed ERROR check.
    job = crm_assets.defs.resolve_job_def("crm_checks")
    checked = job.execute_in_process(instance=DagsterInstance.get(), raise_on_error=False)
    assert not checked.success  # the check blocks
    later = check_results(checked)
    assert later["crm/customers:primary_key"] == (False, "ERROR")
    assert later["crm/contacts:primary_key"] == (True, "ERROR")


def test_a_resource_whose_records_all_lack_the_key_fails_alone(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    """Not one record of `cases` has an id field: the other resources load whole and the run
    fails in one line that names it (a table without its key must not sink the others' load)."""
    for case_id in [r["id"] for r in simulator.records("cases")]:
        simulator.drop_field("cases", case_id, "id")
    assert not any("id" in r for r in simulator.records("cases"))
    result = sync_in_process()
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    served = SMALL_COUNTS["cases"]
    assert f"cases: {served} of {served} records have no id; loaded 0" in (
        failure.step_failure_data.error.message
    )
    others = [n for n in resource_names() if n != "cases"]
    assert all(workspace.count(n) == simulator.count(n) for n in others)


def test_primary_key_check_blocks_on_ids_served_twice(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    ids = [r["id"] for r in simulator.records("contacts")]
    simulator.set_field("contacts", ids[5], "id", ids[4])
    result = sync_with_checks()
    assert not result.success  # a blocking ERROR check that fails fails the run
    assert check_results(result)["crm/contacts:primary_key"] == (False, "ERROR")
    assert workspace.count("contacts") == simulator.count("contacts") - 1
    spec = next(s for s in crm_assets.defs.asset_checks[0].check_specs if s.name == "primary_key")
    assert spec.blocking


def test_row_count_warns_on_an_empty_resource(
    tmp_path, monkeypatch: pytest.MonkeyPatch, workspace: Workspace
) -> None:
    with CRMSimulator(
        {**SMALL_COUNTS, "leads": 0},
        api_key=workspace.env["CRM_API_KEY"],
        access_key=workspace.env["CRM_ACCESS_KEY"],
    ) as sim:
        monkeypatch.setenv("CRM_BASE_URL", sim.base_url)
        result = sync_with_checks()
    assert result.success
    results = check_results(result)
    assert results[f"crm/leads:{ROW_COUNT}"] == (False, "WARN")
    assert results[f"crm/customers:{ROW_COUNT}"] == (True, "WARN")
    leads = materialized_metadata(result)["leads"]
    assert leads["rows_loaded"].value == 0 and leads["dagster/row_count"].value == 0


def test_references_warn_on_dangling_ids(workspace: Workspace, simulator: CRMSimulator) -> None:
    simulator.set_field("contacts", 3, "customer_id", 999_999)
    results = check_results(sync_with_checks())
    assert results["crm/contacts:references"] == (False, "WARN")
    assert results["crm/opportunities:references"] == (True, "WARN")


def test_schema_drift_warns_when_columns_change(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    # The bundled declaration describes the bundled simulator: nothing to report.
    assert check_results(sync_with_checks(["crm/customers"]))["crm/customers:schema_drift"][0]
    first = simulator.records("customers")[0]["id"]
    simulator.set_field("customers", first, "loyalty_tier", "gold")
    simulator.set_field("customers", first, "updated_at", "2031-01-01T00:00:00Z")
    result = sync_with_checks(["crm/customers"])
    assert check_results(result)["crm/customers:schema_drift"] == (False, "WARN")
    # Dagster's own check sees the column the previous sync did not have.
    assert check_results(result)["crm/customers:column_schema_change"] == (False, "WARN")
    assert "loyalty_tier" in workspace.column_types("customers")
    assert materialized_metadata(result)["customers"]["undeclared_fields"].value == "loyalty_tier"
    # It stays reported while the declaration does not name the field.
    again = sync_with_checks(["crm/customers"])
    assert check_results(again)["crm/customers:schema_drift"] == (False, "WARN")

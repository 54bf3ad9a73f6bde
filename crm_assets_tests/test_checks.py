"""Asset checks: each one passes on good data and fails on bad data served by the simulator."""

from __future__ import annotations

import time

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


def sync_with_checks(selection: list[str] | None = None):
    return sync_in_process(selection, checks=True)


def test_every_check_passes_on_good_data(workspace: Workspace, simulator: CRMSimulator) -> None:
    results = check_results(sync_with_checks())
    expected = {
        f"crm/{n}:{c}"
        for n in resource_names()
        for c in ("primary_key", "row_count", "schema_drift", "freshness")
    }
    expected |= {f"crm/{n}:references" for n in ("contacts", "cases", "leads", "opportunities")}
    assert set(results) == expected
    assert {k for k, (passed, _) in results.items() if not passed} == set()


def test_primary_key_fails_on_missing_and_duplicated_ids(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    simulator.set_field("customers", 10, "id", None)
    simulator.set_field("customers", 12, "id", 11)
    result = sync_with_checks()
    assert result.success  # the load goes on; the check says what was wrong
    results = check_results(result)
    assert results["crm/customers:primary_key"] == (False, "ERROR")
    assert results["crm/contacts:primary_key"] == (True, "ERROR")
    rows = workspace.rows("customers")
    assert len(rows) == SMALL_COUNTS["customers"] - 2  # one without id, one merged into id 11
    customers = materialized_metadata(result)["customers"]
    assert customers["records_without_id"].value == 1
    assert customers["duplicate_ids"].value == 1


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
    assert results["crm/leads:row_count"] == (False, "WARN")
    assert results["crm/customers:row_count"] == (True, "WARN")
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
    assert check_results(sync_with_checks(["crm/customers"]))["crm/customers:schema_drift"][0]
    simulator.set_field("customers", 1, "loyalty_tier", "gold")
    simulator.update_records("customers", 1)  # an incremental sync must see the new field
    simulator.set_field("customers", 1, "updated_at", "2031-01-01T00:00:00Z")
    result = sync_with_checks(["crm/customers"])
    assert check_results(result)["crm/customers:schema_drift"] == (False, "WARN")
    assert "loyalty_tier" in workspace.column_types("customers")
    # Unchanged columns on the next sync: the drift is acknowledged.
    assert check_results(sync_with_checks(["crm/customers"]))["crm/customers:schema_drift"][0]


def test_freshness_fails_before_any_sync_and_passes_after(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    defs = crm_assets.defs
    instance = DagsterInstance.get()
    job = defs.resolve_job_def("crm_checks")
    before = job.execute_in_process(instance=instance, raise_on_error=False)
    assert check_results(before)["crm/customers:freshness"] == (False, "WARN")
    assert sync_with_checks(["crm/customers"]).success
    time.sleep(0.1)
    after = check_results(job.execute_in_process(instance=instance, raise_on_error=False))
    assert after["crm/customers:freshness"] == (True, "WARN")
    assert after["crm/contacts:freshness"] == (False, "WARN")

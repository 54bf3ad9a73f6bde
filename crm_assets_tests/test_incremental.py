"""Incremental syncs: only changes are fetched and merged; the cursor lives at the destination."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

from crm_assets.api import resource_names
from crm_assets_tests.conftest import (
    ACCESS_KEY,
    API_KEY,
    SMALL_COUNTS,
    Workspace,
    assert_same_records,
    every_profile,
    materialized_metadata,
    sync_in_process,
)
from crm_simulator import CRMSimulator, Faults


def sync(selection: list[str] | None = None, full_refresh: bool = False):
    return sync_in_process(selection, full_refresh=full_refresh)


def pages_requested(simulator: CRMSimulator, resource: str) -> list[dict[str, str]]:
    return [r.params for r in simulator.requests(resource) if r.status == 200]


def instant(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@every_profile
def test_changed_records_fetch_only_their_pages(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    assert sync().success
    first = pages_requested(simulator, "contacts")
    assert len(first) == 5  # 431 records, 100 a page
    # The first sync has no cursor: it asks for everything, with no filter at all.
    assert not any("updated_since" in r for r in first)
    simulator.reset_requests()
    cursor = max(instant(r["updated_at"]) for r in simulator.records("contacts"))

    changed = simulator.update_records("contacts", 7)
    # The API's filter is inclusive (>=), so records stamped exactly at the cursor come again.
    expected = {
        r["id"] for r in simulator.records("contacts") if instant(r["updated_at"]) >= cursor
    }
    result = sync()
    assert result.success
    requests = pages_requested(simulator, "contacts")
    assert len(requests) == 1, requests  # 7 changed records fit on one page
    assert instant(requests[0]["updated_since"]) == cursor
    assert workspace.count("contacts") == simulator.count("contacts")
    assert_same_records(workspace, simulator, "contacts")
    contacts = materialized_metadata(result)["contacts"]
    assert set(changed) <= expected
    assert contacts["rows_loaded"].value == len(expected)
    assert contacts["dagster/row_count"].value == simulator.count("contacts")


def test_state_lives_with_the_warehouse(workspace: Workspace, simulator: CRMSimulator) -> None:
    assert sync().success
    # A new machine: dlt's local working folder is gone, the warehouse is all that is left.
    shutil.rmtree(workspace.pipelines_dir)
    simulator.update_records("leads", 3)
    simulator.reset_requests()
    assert sync(["crm/leads"]).success
    assert len(pages_requested(simulator, "leads")) == 1
    assert_same_records(workspace, simulator, "leads")


def test_full_refresh_reads_everything_again(workspace: Workspace, simulator: CRMSimulator) -> None:
    assert sync().success
    simulator.reset_requests()
    assert sync(["crm/customers"], full_refresh=True).success
    requests = pages_requested(simulator, "customers")
    assert len(requests) == 3
    assert not any("updated_since" in r for r in requests)
    assert workspace.count("customers") == simulator.count("customers")


def test_resource_without_cursor_syncs_in_full(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    assert sync().success
    simulator.insert_records("cases", 4)
    simulator.reset_requests()
    assert sync(["crm/cases"]).success
    requests = pages_requested(simulator, "cases")
    assert len(requests) == 1 and "updated_since" not in requests[0]
    assert_same_records(workspace, simulator, "cases")


@every_profile
def test_failed_sync_keeps_the_cursor(
    workspace: Workspace, simulator: CRMSimulator, monkeypatch
) -> None:
    assert sync().success
    changed = set(simulator.update_records("opportunities", 150))
    monkeypatch.setenv("CRM_REQUEST_MAX_ATTEMPTS", "2")
    # The second page of the changes is broken: the first page alone must not move the cursor.
    simulator.faults = Faults(rate_not_json=1.0, only_resources=("opportunities",))
    assert not sync(["crm/opportunities"]).success
    simulator.faults = Faults()
    simulator.reset_requests()
    assert sync(["crm/opportunities"]).success
    assert len(pages_requested(simulator, "opportunities")) == 2  # all 150 changes again
    rows = {r["id"]: r for r in workspace.rows("opportunities")}
    assert changed <= set(rows)
    assert_same_records(workspace, simulator, "opportunities")
    assert all(workspace.count(n) == simulator.count(n) for n in resource_names())


def test_a_crm_that_refuses_the_filter_is_read_in_full_and_exactly(
    workspace: Workspace, monkeypatch
) -> None:
    # A CRM that knows no "changed since" filter and answers 400 to parameters it does not know.
    with CRMSimulator(
        SMALL_COUNTS,
        api_key=API_KEY,
        access_key=ACCESS_KEY,
        profile="crm",
        strict_params=True,
        filter_param=None,
    ) as strict:
        monkeypatch.setenv("CRM_BASE_URL", strict.base_url)
        first = sync()
        assert first.success  # the first sync sends no filter at all
        strict.update_records("contacts", 5)
        strict.insert_records("leads", 3)
        strict.reset_requests()
        second = sync()
        assert second.success
        refused = [r for r in strict.requests() if r.status == 400]
        assert {r.params.get("updated_since") is not None for r in refused} == {True}
        assert len(refused) == 4  # once per paged resource, then never again in that run
        for name in resource_names():
            assert_same_records(workspace, strict, name)
        metadata = materialized_metadata(second)
        assert metadata["contacts"]["filter_refused"].value == "updated_since"
        assert "filter_refused" not in metadata["cases"]

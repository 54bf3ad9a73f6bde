"""Layer 3: the Dagster assets, materialized in-process against the simulator over HTTP."""

from __future__ import annotations

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    build_schedule_context,
)

import crm_assets
from crm_assets.api import resource_names
from crm_assets.assets import failure_summary
from crm_assets.errors import CRMAPIError, CRMError
from crm_assets_tests.conftest import (
    ACCESS_KEY,
    API_KEY,
    SMALL_COUNTS,
    Workspace,
    assert_same_records,
    check_results,
    every_profile,
    materialized_metadata,
    sync_in_process,
)
from crm_simulator import CRMSimulator


def run_sync(selection: list[str] | None = None):
    return sync_in_process(selection)


@every_profile
def test_full_sync_loads_every_record_once_with_the_same_values(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    result = run_sync()
    assert result.success
    for name in resource_names():
        assert workspace.count(name) == simulator.count(name)
        assert_same_records(workspace, simulator, name)
    materialized = {
        e.asset_key: e.materialization.metadata for e in result.get_asset_materialization_events()
    }
    assert set(materialized) == {AssetKey(["crm", n]) for n in resource_names()}
    customers = materialized[AssetKey(["crm", "customers"])]
    assert customers["dagster/row_count"].value == simulator.count("customers")
    assert customers["rows_loaded"].value == simulator.count("customers")
    assert customers["pages_fetched"].value == 3  # 250 records at 100 a page


@every_profile
def test_second_sync_merges_without_duplicates(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    synced = run_sync()
    assert synced.success
    first = {name: workspace.count(name) for name in resource_names()}
    # Into empty tables the first sync appends; every later one merges.
    modes = {n: m["load_mode"].value for n, m in materialized_metadata(synced).items()}
    assert modes == dict.fromkeys(resource_names(), "append (the table was empty)")
    changed = simulator.update_records("contacts", 7)
    again = run_sync()
    assert again.success
    modes = {n: m["load_mode"].value for n, m in materialized_metadata(again).items()}
    assert modes == dict.fromkeys(resource_names(), "merge")
    assert {name: workspace.count(name) for name in resource_names()} == first
    assert_same_records(workspace, simulator, "contacts")
    rows = {r["id"]: r for r in workspace.rows("contacts")}
    assert all(rows[i]["updated_at"] is not None for i in changed)
    # The loads' files are gone, a loaded package's record of them stays: the pipelines folder
    # does not grow by the records of every sync.
    loaded = [p for p in workspace.pipelines_dir.rglob("loaded/*") if p.is_dir()]
    assert loaded and all((p / "package_completed.json").exists() for p in loaded)
    assert not list(workspace.pipelines_dir.rglob("*.parquet"))


@every_profile
def test_an_id_served_twice_into_an_empty_table_lands_once_as_its_later_record(
    workspace: Workspace, simulator: CRMSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first sync appends; a record served again two pages later, after the first page
    has landed in its own load, leaves one row: the later one, as a merge would keep."""
    monkeypatch.setenv("CRM_CHUNK_RECORDS", "100")  # one page per load
    ids = [r["id"] for r in simulator.records("customers")]
    simulator.set_field("customers", ids[150], "email", "served-second@example.com")
    simulator.set_field("customers", ids[150], "id", ids[10])
    result = run_sync(selection=["crm/customers"])
    assert result.success  # a repeat is the primary_key check's to report, not a failed load
    rows = workspace.rows("customers")
    assert len(rows) == len({r["id"] for r in rows}) == simulator.count("customers") - 1
    assert next(r for r in rows if r["id"] == ids[10])["email"] == "served-second@example.com"
    customers = materialized_metadata(result)["customers"]
    assert customers["load_mode"].value == "append (the table was empty)"
    assert customers["chunks"].value == 3
    assert customers["duplicate_ids"].value == 1
    assert customers["dagster/row_count"].value == len(rows)


def test_a_read_that_fails_after_an_id_served_twice_leaves_one_row_of_it(
    workspace: Workspace, simulator: CRMSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pages read before the failure are loaded, appended, and brought to one row per id
    before the run fails: the next sync merges and would not see the repeat again."""
    monkeypatch.setenv("CRM_REQUEST_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("CRM_REQUEST_TIMEOUT", "1")
    ids = [r["id"] for r in simulator.records("customers")]
    simulator.set_field("customers", ids[150], "id", ids[10])
    simulator.hold("customers", 200)  # the last page never answers
    try:
        result = run_sync(selection=["crm/customers"])
    finally:
        simulator.release()
    assert not result.success
    rows = workspace.rows("customers")
    assert len(rows) == len({r["id"] for r in rows}) == 199


@every_profile
def test_selecting_one_asset_requests_only_its_endpoint(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    simulator.reset_requests()
    result = run_sync(selection=["crm/contacts"])
    assert result.success
    assert {r.path for r in simulator.requests()} == {"/v1/contacts"}
    assert [e.asset_key for e in result.get_asset_materialization_events()] == [
        AssetKey(["crm", "contacts"])
    ]
    assert workspace.count("contacts") == simulator.count("contacts")


def test_credentials_reach_the_api_as_configured(
    workspace: Workspace, simulator: CRMSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The simulator answers 401/403 to anything else, so a success proves the placement."""
    monkeypatch.setenv("CRM_ACCESS_KEY_LOCATION", "query")
    monkeypatch.setenv("CRM_ACCESS_KEY_NAME", "access_key")
    with CRMSimulator(
        {"customers": 5, "contacts": 0, "cases": 0, "leads": 0, "opportunities": 0},
        api_key=API_KEY,
        access_key=ACCESS_KEY,
        access_key_name="access_key",
        access_key_location="query",
    ) as query_sim:
        monkeypatch.setenv("CRM_BASE_URL", query_sim.base_url)
        assert run_sync(selection=["crm/customers"]).success
        assert {r.status for r in query_sim.requests()} == {200}
    assert workspace.count("customers") == 5


def test_wrong_api_key_fails_with_one_line_naming_resource_status_and_path(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_API_KEY", "wrong-key-123")
    result = run_sync(selection=["crm/customers"])
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.message
    assert "customers: HTTP 401" in message
    assert "GET /v1/customers?startIndex=0&limit=100" in message
    assert "wrong-key-123" not in message


def test_run_without_secrets_fails_naming_the_missing_variable(
    workspace: Workspace, simulator: CRMSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRM_API_KEY")
    simulator.reset_requests()
    result = run_sync()
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_failure_data.error.message.strip().endswith(
        "CRM_API_KEY is not set: export CRM_API_KEY where dagster dev, the daemon or the CLI "
        "runs, or put api_key under [sources.crm] in .dlt/secrets.toml (README: Point it at your "
        "CRM)"
    )
    assert simulator.requests() == []
    assert not workspace.duckdb_path.exists() and not workspace.pipelines_dir.exists()


def test_schedule_run_request_executes(workspace: Workspace, simulator: CRMSimulator) -> None:
    defs = crm_assets.defs
    schedule = defs.get_schedule_def("crm_sync_schedule")
    instance = DagsterInstance.get()
    with build_schedule_context(instance=instance) as context:
        data = schedule.evaluate_tick(context)
    assert data.run_requests and len(data.run_requests) == 1
    job = defs.resolve_job_def(schedule.job_name)
    result = job.execute_in_process(instance=instance, tags=data.run_requests[0].tags)
    assert result.success
    for name in resource_names():
        assert workspace.count(name) == simulator.count(name)


def test_a_fix_shared_by_every_failure_is_said_once() -> None:
    failures: list[CRMError] = [
        CRMAPIError(
            name, "HTTP 401 Unauthorized", f"/v1/{name}?startIndex=0&limit=100", "check CRM_API_KEY"
        )
        for name in ("customers", "contacts")
    ]
    assert failure_summary(failures, 5) == (
        "2 of 5 CRM resources failed (check CRM_API_KEY): customers: HTTP 401 Unauthorized from "
        "GET /v1/customers?startIndex=0&limit=100; contacts: HTTP 401 Unauthorized from GET "
        "/v1/contacts?startIndex=0&limit=100"
    )
    mixed = [failures[0], CRMAPIError("cases", "HTTP 404 Not Found", "/v1/cases")]
    assert failure_summary(mixed, 5) == "2 of 5 CRM resources failed: " + "; ".join(
        str(f) for f in mixed
    )


def test_a_key_that_changes_type_fails_in_one_line_and_rebuild_reloads(
    workspace: Workspace, simulator: CRMSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_sync(["crm/customers", "crm/cases"]).success  # integer ids
    before = workspace.count("customers")
    # The same CRM, now sending its ids as strings.
    with CRMSimulator(
        SMALL_COUNTS, api_key=API_KEY, access_key=ACCESS_KEY, profile="crm"
    ) as strings:
        monkeypatch.setenv("CRM_BASE_URL", strings.base_url)
        result = run_sync(["crm/customers", "crm/cases"])
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        message = failure.step_failure_data.error.message
        assert "customers: id is now text in the CRM" in message
        assert "bigint in the warehouse" in message and "`rebuild: true`" in message
        assert workspace.count("customers") == before  # nothing lost
        rebuilt = sync_in_process(["crm/customers", "crm/cases"], rebuild=True)
        assert rebuilt.success
        assert_same_records(workspace, strings, "customers")
        assert workspace.column_types("customers")["id"] == "VARCHAR"


@pytest.mark.parametrize("profile", ["crm"])
def test_a_crm_unlike_its_declaration_loads_whole_and_says_how_it_differs(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    result = sync_in_process(checks=True)
    assert result.success
    for name in resource_names():
        assert_same_records(workspace, simulator, name)
    customers = workspace.column_types("customers")
    assert customers["id"] == "VARCHAR"  # declared bigint; the CRM sends strings
    assert customers["created_at"] == "TIMESTAMP WITH TIME ZONE"
    assert customers["created_at_2"] == "BIGINT"  # createdAt, epoch milliseconds, kept too
    assert "employee_count" not in customers  # declared, never sent: no empty column
    assert customers["last_activity_date"] == "DATE"
    assert workspace.column_types("opportunities")["amount"] == "DOUBLE"  # four decimals kept
    metadata = materialized_metadata(result)["customers"]
    assert metadata["declared_never_sent"].value == "employee_count"
    assert metadata["type_mismatches"].value["id"] == "declared bigint, loaded as text"
    assert "createdAt" in metadata["undeclared_fields"].value
    assert metadata["renamed_fields"].value == {"createdAt": "created_at_2"}
    columns = {c.name: c for c in metadata["dagster/column_schema"].value.columns}
    assert columns["id"].type == "text"
    assert columns["name"].description == "Company or person name."
    assert check_results(result)["crm/customers:schema_drift"] == (False, "WARN")

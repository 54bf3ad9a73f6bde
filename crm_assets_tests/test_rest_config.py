"""One config language: entries of dlt's REST API config beyond the API contract's shape, added to a
copy of `CRM_API` as data alone, load through dlt's own rest_api machinery with the same typing,
metadata, checks and secret hygiene as the fast path."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from dagster import AssetKey, DagsterInstance, materialize

from crm_assets import build_definitions
from crm_assets.api import CRM_API, resource_names
from crm_assets.rest_api_path import client_gap, fast_path_gap
from crm_assets.source import chunked_reads
from crm_assets_tests.compare import record_differences
from crm_assets_tests.conftest import (
    ACCESS_KEY,
    API_KEY,
    SMALL_COUNTS,
    Workspace,
    check_results,
    make_workspace,
    materialized_metadata,
)
from crm_assets_tests.fault_support import ScriptedServer, count_secrets, leak_report
from crm_simulator import CRMSimulator

OFFSET = {"type": "offset", "limit": 100, "offset_param": "startIndex"}
# A resource whose API pages by a `next` URL in the body.
LINKED_TASKS = {
    "name": "tasks",
    "endpoint": {
        "path": "/v1/tasks",
        "data_selector": "data",
        "paginator": {"type": "json_link", "next_url_path": "next"},
    },
}


def config_with(*entries: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(CRM_API)
    config["resources"].extend(entries)
    return config


def sync(config: dict[str, Any], selection: list[str]) -> Any:
    defs = build_definitions(config)
    return materialize(
        [*defs.assets, *defs.asset_checks],
        resources=defs.resources,
        selection=selection,
        instance=DagsterInstance.get(),
        raise_on_error=False,
    )


def assert_loaded_exactly(ws: Workspace, table: str, served: list[dict[str, Any]]) -> None:
    rows = {row["id"]: row for row in ws.rows(table)}
    assert sorted(map(str, rows)) == sorted(str(r["id"]) for r in served)
    for record in served:
        assert not record_differences(record, rows[record["id"]]), record["id"]


def checks_of(result: Any, table: str) -> dict[str, bool]:
    return {
        key.split(":", 1)[1]: passed
        for key, (passed, _) in check_results(result).items()
        if key.startswith(f"crm/{table}:")
    }


@pytest.fixture
def simulator() -> Any:
    with CRMSimulator(SMALL_COUNTS, api_key=API_KEY, access_key=ACCESS_KEY, notes=True) as sim:
        yield sim


def test_the_fast_path_takes_the_contract_and_dlt_the_rest() -> None:
    assert all(fast_path_gap(r) is None for r in CRM_API["resources"])
    assert client_gap(CRM_API["client"]) is None
    link = {"path": "/v1/x", "data_selector": "data", "paginator": {"type": "json_link"}}
    assert fast_path_gap({"name": "x", "endpoint": link}) == "a paginator other than offset"
    notes = {"path": "/v1/customers/{resources.customers.id}/notes", "data_selector": "data"}
    assert (
        fast_path_gap({"name": "n", "endpoint": notes}) == "a path that refers to another resource"
    )
    steps = {"name": "s", "endpoint": {"path": "/v1/s", "data_selector": "data"}}
    assert fast_path_gap({**steps, "processing_steps": []}) == "processing_steps"
    assert client_gap({"auth": {"type": "bearer", "token": "t"}}) == (
        "client.auth other than an api_key"
    )


def test_only_offset_paged_reads_of_the_fast_path_share_a_chunk() -> None:
    names = resource_names()
    # cases comes on one page: read whole, it takes no share of a chunk.
    assert chunked_reads(CRM_API, names) == len(names) - 1
    assert chunked_reads(CRM_API, ["cases"]) == 0
    link = {"path": "/v1/x", "data_selector": "data", "paginator": {"type": "json_link"}}
    with_link = {**CRM_API, "resources": [*CRM_API["resources"], {"name": "x", "endpoint": link}]}
    assert chunked_reads(with_link, [*names, "x"]) == len(names) - 1
    bearer = {**CRM_API, "client": {**CRM_API["client"], "auth": {"type": "bearer", "token": "t"}}}
    assert chunked_reads(bearer, names) == 0  # every entry goes through dlt


def test_a_json_link_paginator_loads_every_page(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    tasks = [
        {"id": f"T-{i:04d}", "title": f"Call back #{i}", "due": "2025-02-01T09:00:00+01:00"}
        for i in range(1, 252)
    ]
    simulator.add_resource("tasks", tasks, paging="link")
    config = config_with(LINKED_TASKS)
    simulator.reset_requests()
    result = sync(config, ["crm/tasks"])
    assert result.success
    assert_loaded_exactly(workspace, "tasks", simulator.records("tasks"))
    assert workspace.column_types("tasks")["due"] == "TIMESTAMP WITH TIME ZONE"
    assert len(simulator.requests("tasks")) == 3  # 100 + 100 + 51, following `next`
    metadata = materialized_metadata(result)["tasks"]
    assert metadata["records_fetched"].value == 251
    assert metadata["rows_loaded"].value == 251
    assert checks_of(result, "tasks")["primary_key"]


def test_an_id_served_twice_by_a_json_link_api_lands_once(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    """dlt reads this resource; its first sync, an append, still ends with one row per id."""
    tasks = [{"id": f"T-{i:04d}", "title": f"Call back #{i}"} for i in range(1, 252)]
    tasks[150] = {"id": "T-0011", "title": "served second"}
    simulator.add_resource("tasks", tasks, paging="link")
    result = sync(config_with(LINKED_TASKS), ["crm/tasks"])
    rows = workspace.rows("tasks")
    assert len(rows) == len({r["id"] for r in rows}) == 250
    metadata = materialized_metadata(result)["tasks"]
    assert metadata["duplicate_ids"].value == 1
    assert not checks_of(result, "tasks")["primary_key"]


def test_the_dlt_path_keeps_a_lone_surrogate_as_its_escape(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dlt's reads decode pages with `requests`, which keeps half of a UTF-16 pair in a string;
    the warehouse cannot store it. As on the fast path, it lands as its escape text, and ids that
    differ only in it stay two rows."""
    tasks = [{"id": f"T-{i}", "title": f"Call back #{i}"} for i in range(1, 121)]
    tasks[0]["id"], tasks[1]["id"] = "T-0\ud83d", "T-0\ud83e"
    tasks[100]["title"] = "cut \ud83d"
    base: list[str] = []

    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        start = int(parse_qs(urlsplit(path).query).get("cursor", ["0"])[0])
        following = f"{base[0]}/v1/tasks?cursor={start + 100}" if start + 100 < len(tasks) else None
        body = {"data": tasks[start : start + 100], "next": following}
        return 200, {}, json.dumps(body).encode()  # json writes the half as "\\udXXX"

    with ScriptedServer(answer) as crm:
        base.append(crm.url)
        monkeypatch.setenv("CRM_BASE_URL", crm.url)
        result = sync(config_with(LINKED_TASKS), ["crm/tasks"])
    assert result.success
    rows = {row["id"]: row for row in workspace.rows("tasks")}
    assert sorted(rows) == sorted(
        t["id"].encode("utf-8", "backslashreplace").decode() for t in tasks
    )
    assert rows["T-0\\ud83d"]["title"] == "Call back #1"
    assert rows["T-101"]["title"] == "cut \\ud83d"
    assert materialized_metadata(result)["tasks"]["strings_with_lone_surrogates"].value == 3


def test_a_dependent_resource_reads_every_customer_s_notes(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    config = config_with(
        {
            "name": "notes",
            "endpoint": {
                "path": "/v1/customers/{resources.customers.id}/notes",
                "data_selector": "data",
            },
            "references": [
                {
                    "columns": ["customer_id"],
                    "referenced_table": "customers",
                    "referenced_columns": ["id"],
                }
            ],
        }
    )
    result = sync(config, ["crm/customers", "crm/notes"])
    assert result.success
    assert_loaded_exactly(workspace, "notes", simulator.notes())
    assert_loaded_exactly(workspace, "customers", simulator.records("customers"))
    note_paths = {r.path for r in simulator.requests() if r.path.endswith("/notes")}
    assert len(note_paths) == simulator.count("customers")  # one request per customer
    checks = checks_of(result, "notes")
    assert checks["primary_key"] and checks["references"], checks


def test_processing_steps_filter_the_records(workspace: Workspace, simulator: CRMSimulator) -> None:
    config = config_with(
        {
            "name": "primary_contacts",
            "endpoint": {"path": "/v1/contacts", "data_selector": "data", "paginator": OFFSET},
            "processing_steps": [{"filter": lambda record: record["is_primary"]}],
        }
    )
    result = sync(config, ["crm/primary_contacts"])
    assert result.success
    primary = [r for r in simulator.records("contacts") if r["is_primary"]]
    assert 0 < len(primary) < simulator.count("contacts")
    assert_loaded_exactly(workspace, "primary_contacts", primary)


@pytest.mark.parametrize("location", ["header", "query"])
def test_the_dlt_path_leaks_no_secret(
    tmp_path: Path,
    location: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # dlt's REST client logs every request URL at INFO on its own logger (which does not
    # propagate); listen there, after dlt's filters, as its handler would.
    logged: list[str] = []
    listener = logging.Handler()
    listener.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    dlt_logger = logging.getLogger("dlt")
    monkeypatch.setattr(dlt_logger, "level", logging.INFO)
    monkeypatch.setattr(dlt_logger, "handlers", [*dlt_logger.handlers, listener])
    with CRMSimulator(
        SMALL_COUNTS, api_key=API_KEY, access_key=ACCESS_KEY, access_key_location=location
    ) as sim:
        sim.add_resource("tasks", [{"id": i} for i in range(1, 120)], paging="link")
        ws = make_workspace(tmp_path / "ws", sim.base_url)
        for name, value in ws.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("CRM_ACCESS_KEY_LOCATION", location)
        config = config_with(
            LINKED_TASKS,
            {"name": "missing", "endpoint": {"path": "/v1/missing", "data_selector": "data"}},
        )
        result = sync(config, ["crm/tasks", "crm/missing"])
    assert not result.success  # /v1/missing is a 404
    assert ws.count("tasks") == 119
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.message
    assert "missing: " in message and "404" in message
    assert not count_secrets(message, (API_KEY, ACCESS_KEY))
    captured = capsys.readouterr()
    leaks = leak_report(
        (API_KEY, ACCESS_KEY),
        output=captured.out + captured.err + "\n".join(logged),
        dagster_home=ws.dagster_home,
        pipelines_dir=ws.pipelines_dir,
        duckdb_path=ws.duckdb_path,
    )
    assert leaks.total == 0, leaks
    assert any("/v1/tasks" in line for line in logged)  # the requests were logged, masked
    assert AssetKey(["crm", "tasks"]) in {
        e.asset_key for e in result.get_asset_materialization_events()
    }


def test_a_config_dlt_would_refuse_fails_when_the_definitions_load() -> None:
    config = config_with(
        {
            "name": "tasks",
            "endpoint": {"path": "/v1/tasks", "paginator": {"type": "offset", "limt": 5}},
        }
    )
    with pytest.raises(ValueError, match=r"^CRM_API resource 'tasks': .*limt.* at tasks/endpoint"):
        build_definitions(config)

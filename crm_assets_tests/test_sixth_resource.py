"""A resource added to the REST config as data becomes an asset with checks and metadata."""

from __future__ import annotations

import copy

from dagster import AssetKey, DagsterInstance, materialize

from crm_assets import build_definitions
from crm_assets.api import CRM_API
from crm_assets_tests.conftest import Workspace, check_results, materialized_metadata
from crm_simulator import CRMSimulator

TASK_COLUMNS = {
    "id": {
        "data_type": "bigint",
        "nullable": False,
        "primary_key": True,
        "description": "Task id.",
    },
    "contact_id": {
        "data_type": "bigint",
        "nullable": True,
        "description": "The contact the task is about (contacts.id).",
    },
    "title": {"data_type": "text", "nullable": False, "description": "What to do."},
    "due_at": {
        "data_type": "timestamp",
        "timezone": True,
        "nullable": True,
        "description": "When it is due.",
    },
    "is_done": {"data_type": "bool", "nullable": False, "description": "Whether it is done."},
    "updated_at": {
        "data_type": "timestamp",
        "timezone": True,
        "nullable": False,
        "description": "When the task was last changed.",
    },
}


def with_tasks() -> dict:
    config = copy.deepcopy(CRM_API)
    config["resources"].append(
        {
            "name": "tasks",
            "endpoint": {
                "path": "/v1/tasks",
                "data_selector": "data",
                "paginator": {"type": "offset", "limit": 100, "offset_param": "startIndex"},
                "incremental": {
                    "cursor_path": "updated_at",
                    "start_param": "updated_since",
                    "initial_value": "1970-01-01T00:00:00Z",
                },
            },
            "columns": TASK_COLUMNS,
            "references": [
                {
                    "columns": ["contact_id"],
                    "referenced_table": "contacts",
                    "referenced_columns": ["id"],
                }
            ],
        }
    )
    return config


def test_a_sixth_resource_is_data_alone(workspace: Workspace, simulator: CRMSimulator) -> None:
    tasks = [
        {
            "id": i,
            "contact_id": 1 + i % 50,
            "title": f"Call back #{i}",
            "due_at": None if i % 4 == 0 else f"2025-02-{1 + i % 28:02d}T09:00:00Z",
            "is_done": i % 3 == 0,
            "updated_at": f"2025-01-{1 + i % 28:02d}T12:00:00Z",
        }
        for i in range(1, 251)
    ]
    simulator.add_resource("tasks", tasks)
    defs = build_definitions(with_tasks())

    graph = defs.resolve_asset_graph()
    assert AssetKey(["crm", "tasks"]) in graph.get_all_asset_keys()
    assert {
        k.name for k in graph.asset_check_keys if k.asset_key == AssetKey(["crm", "tasks"])
    } == {
        "primary_key",
        "dagster_row_count_bounds_check",
        "schema_drift",
        "column_schema_change",
        "deletes",
        "references",
    }

    simulator.reset_requests()
    result = materialize(
        [*defs.assets, *defs.asset_checks],
        resources=defs.resources,
        selection=["crm/contacts", "crm/tasks"],
        instance=DagsterInstance.get(),
        raise_on_error=False,
    )
    assert result.success
    assert {r.path for r in simulator.requests()} == {"/v1/contacts", "/v1/tasks"}
    assert workspace.count("tasks") == 250
    assert workspace.column_types("tasks")["due_at"] == "TIMESTAMP WITH TIME ZONE"
    metadata = materialized_metadata(result)["tasks"]
    assert metadata["dagster/row_count"].value == 250
    assert metadata["pages_fetched"].value == 3
    checks = {
        key.split(":", 1)[1]: passed
        for key, (passed, _) in check_results(result).items()
        if key.startswith("crm/tasks:")
    }
    assert checks == {
        "primary_key": True,
        "dagster_row_count_bounds_check": True,
        "schema_drift": True,
        "column_schema_change": True,
        "deletes": True,
        "references": True,
    }

"""Layer 2: the dlt source alone (no Dagster) against the simulator, into a DuckDB file."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import dlt
import pytest

from crm_assets.api import CRM_API, resource_names
from crm_assets.source import crm_source
from crm_assets.transport import CRMConnection, CRMTransport
from crm_assets_tests.conftest import ACCESS_KEY, API_KEY, Workspace, assert_same_records
from crm_simulator import CRMSimulator


def run_source(simulator: CRMSimulator, root: Path, config=CRM_API, log=None):
    connection = CRMConnection(simulator.base_url, API_KEY, ACCESS_KEY)
    pipeline = dlt.pipeline(
        "source_test",
        destination=dlt.destinations.duckdb(str(root / "warehouse.duckdb")),
        dataset_name="crm",
        pipelines_dir=str(root / "pipelines"),
    )
    stats: dict = {}
    with CRMTransport(connection, log=log) as transport:
        source = crm_source(transport, config, stats=stats)
        info = pipeline.run(source, loader_file_format="parquet")
    return info, stats


def test_source_loads_every_record_with_declared_types(
    tmp_path: Path, simulator: CRMSimulator
) -> None:
    info, stats = run_source(simulator, tmp_path)
    assert not info.has_failed_jobs
    ws = Workspace(tmp_path, tmp_path / "warehouse.duckdb", tmp_path / "pipelines", tmp_path, {})
    for name in resource_names():
        assert_same_records(ws, simulator, name)
        assert stats[name].records == simulator.count(name)
    types = ws.column_types("opportunities")
    assert types["amount"] == "DECIMAL(18,2)"
    assert types["created_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["expected_close_date"] == "DATE"
    assert types["is_won"] == "BOOLEAN"
    assert types["line_items"] == "JSON"
    assert types["probability"] == "BIGINT"


def test_one_page_endpoint_that_has_more_says_so(
    tmp_path: Path, simulator: CRMSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    # An endpoint configured without a paginator whose API pages anyway: what came is loaded
    # and the log says the config needs a paginator.
    simulator.add_resource("notes", [{"id": i, "body": f"note {i}"} for i in range(1, 251)])
    config = copy.deepcopy(CRM_API)
    config["resources"] = [
        {"name": "notes", "endpoint": {"path": "/v1/notes", "data_selector": "data"}}
    ]
    with caplog.at_level(logging.WARNING, logger="crm_assets"):
        info, _ = run_source(simulator, tmp_path, config, logging.getLogger("crm_assets"))
    assert not info.has_failed_jobs
    assert "notes: GET /v1/notes returned 100 of 250 records on its one page" in caplog.text

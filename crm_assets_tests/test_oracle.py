"""The oracle: the project loads what plain dlt loads from the same CRM, for every data profile.

The same simulator is synced twice: once through plain `rest_api_source` with the API contract
as the seed writes it (its own DuckDB file), once through the project. Both must hold the same
ids in every table, and every field both loaded must hold equal values once representation is
normalised (see compare.py). Plain dlt flattens nested objects into `parent__child` columns; the
project keeps them as JSON, so those are compared inside the JSON. Where the CRM sends two fields
that dlt's naming maps to one column, dlt keeps one of them: its value must be one of the two the
project kept.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pytest
from dlt.sources.rest_api import rest_api_source

from crm_assets.api import SEED_API, resource_names
from crm_assets_tests.compare import candidates, equivalent, flattened, logical
from crm_assets_tests.conftest import (
    ACCESS_KEY,
    API_KEY,
    PROFILES,
    Workspace,
    sync_in_process,
)
from crm_simulator import CRMSimulator


def plain_dlt(simulator: CRMSimulator, root: Path) -> Path:
    """The seed's config through dlt's own REST API source, as its documentation shows."""
    config: Any = copy.deepcopy(SEED_API)
    config["client"]["base_url"] = simulator.base_url
    config["client"]["auth"]["api_key"] = API_KEY
    config["client"]["headers"] = {"X-Access-Key": ACCESS_KEY}
    path = root / "plain.duckdb"
    pipeline = dlt.pipeline(
        "plain_dlt",
        destination=dlt.destinations.duckdb(str(path)),
        dataset_name="crm",
        pipelines_dir=str(root / "plain_pipelines"),
    )
    info = pipeline.run(rest_api_source(config))
    assert not info.has_failed_jobs
    return path


def table_rows(path: Path, table: str) -> dict[Any, dict[str, Any]]:
    with duckdb.connect(str(path), read_only=True) as con:
        cursor = con.execute(f'SELECT * FROM crm."{table}"')
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return {row["id"]: row for row in rows}


def differences(plain: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """dlt's fields whose value the project's row does not hold."""
    out: list[str] = []
    our_columns = list(ours)
    for column in plain:
        if column.startswith("_dlt") or "__v_" in column:
            continue
        expected = logical(plain, column)
        choices = [logical(ours, c) for c in candidates(column, our_columns) if c in ours]
        if not choices:
            # A nested value dlt flattened: look inside the project's JSON column.
            parent, _, path = column.partition("__")
            if parent in ours and path:
                choices = [flattened(ours[parent], path) if ours[parent] is not None else None]
            else:
                choices = [None]  # a column only dlt has must then be empty in this row
        if not any(equivalent(expected, choice) for choice in choices):
            out.append(f"{column}: dlt {expected!r}, project {choices!r}")
    return out


@pytest.mark.parametrize("profile", PROFILES)
def test_the_project_loads_what_plain_dlt_loads(
    profile: str, workspace: Workspace, simulator: CRMSimulator, tmp_path: Path
) -> None:
    plain = plain_dlt(simulator, tmp_path)
    result = sync_in_process()
    assert result.success
    problems: dict[str, list[str]] = {}
    for name in resource_names():
        theirs = table_rows(plain, name)
        ours = table_rows(workspace.duckdb_path, name)
        assert sorted(map(str, ours)) == sorted(map(str, theirs)), f"{name}: ids differ"
        for key, row in theirs.items():
            found = differences(row, ours[key])
            if found:
                problems.setdefault(name, []).extend(f"id={key} {d}" for d in found[:3])
    assert not problems, problems

"""Shared fixtures: a live CRM simulator over real HTTP and an isolated place for every run.

Each test gets its own DuckDB file, dlt pipelines folder and DAGSTER_HOME under tmp_path, and the
secrets are distinctive strings so that a leak check can search for them anywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import AssetCheckKey, DagsterInstance, RunConfig, materialize

from crm_assets_tests.compare import record_differences
from crm_simulator import CRMSimulator

REPO_ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-live-APIKEY-7f3a9c1e5b"
ACCESS_KEY = "ak-ACCESSKEY-4d8e2f6a0c"
# Not multiples of the page size, so the last page of each resource is a partial one.
SMALL_COUNTS = {"customers": 250, "contacts": 431, "cases": 120, "leads": 309, "opportunities": 205}
CRM_ENV_VARS = (
    "CRM_BASE_URL",
    "CRM_API_KEY",
    "CRM_ACCESS_KEY",
    "CRM_ACCESS_KEY_NAME",
    "CRM_ACCESS_KEY_LOCATION",
    "CRM_DUCKDB_PATH",
    "CRM_PIPELINES_DIR",
    "CRM_DESTINATION",
    "CRM_DATASET",
    "CRM_SYNC_CRON",
    "CRM_CONCURRENCY",
    "CRM_REQUEST_MAX_ATTEMPTS",
    "CRM_REQUEST_BACKOFF",
    "CRM_REQUEST_MAX_BACKOFF",
    "CRM_REQUEST_TIMEOUT",
    "CRM_CONNECT_TIMEOUT",
    # dlt's own names for the same settings (see CRMCredentials): a developer's exported ones
    # must not leak into tests that provoke a missing secret.
    "SOURCES__CRM__BASE_URL",
    "SOURCES__CRM__API_KEY",
    "SOURCES__CRM__ACCESS_KEY",
)


@dataclass
class Workspace:
    """Where one test's run puts everything, and the environment that points there."""

    root: Path
    duckdb_path: Path
    pipelines_dir: Path
    dagster_home: Path
    env: dict[str, str]

    def rows(self, table: str) -> list[dict[str, Any]]:
        with duckdb.connect(str(self.duckdb_path), read_only=True) as con:
            cursor = con.execute(f'SELECT * FROM crm."{table}" ORDER BY id')
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def count(self, table: str) -> int:
        with duckdb.connect(str(self.duckdb_path), read_only=True) as con:
            return con.execute(f'SELECT count(*) FROM crm."{table}"').fetchone()[0]

    def column_types(self, table: str) -> dict[str, str]:
        with duckdb.connect(str(self.duckdb_path), read_only=True) as con:
            return dict(
                con.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'crm' AND table_name = ?",
                    [table],
                ).fetchall()
            )


# The simulator's data profiles: its own declared schema, and two CRMs unlike it (string and UUID
# ids, undeclared and camelCase fields, other timestamp forms, numbers in text columns...).
PROFILES = ("declared", "crm", "uuid")
# For the end-to-end tests that must hold on any CRM: `@every_profile` above the test.
every_profile = pytest.mark.parametrize("profile", PROFILES)


@pytest.fixture
def profile() -> str:
    """The simulator's data profile; parametrize `profile` to run a test on others."""
    return "declared"


@pytest.fixture
def simulator(profile: str) -> Iterator[CRMSimulator]:
    with CRMSimulator(SMALL_COUNTS, api_key=API_KEY, access_key=ACCESS_KEY, profile=profile) as sim:
        yield sim


def make_workspace(root: Path, base_url: str) -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    ws = Workspace(
        root=root,
        duckdb_path=root / "warehouse.duckdb",
        pipelines_dir=root / "pipelines",
        dagster_home=root / "dagster_home",
        env={},
    )
    ws.dagster_home.mkdir()
    ws.env = {
        "CRM_BASE_URL": base_url,
        "CRM_API_KEY": API_KEY,
        "CRM_ACCESS_KEY": ACCESS_KEY,
        "CRM_DUCKDB_PATH": str(ws.duckdb_path),
        "CRM_PIPELINES_DIR": str(ws.pipelines_dir),
        "DAGSTER_HOME": str(ws.dagster_home),
        # Fail fast in tests that provoke failures; the defaults suit a real CRM.
        "CRM_REQUEST_BACKOFF": "0.01",
        "CRM_REQUEST_MAX_BACKOFF": "0.2",
    }
    return ws


@pytest.fixture
def workspace(
    tmp_path: Path, simulator: CRMSimulator, monkeypatch: pytest.MonkeyPatch
) -> Workspace:
    """An isolated run environment pointed at the simulator, applied to this process too."""
    for name in CRM_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    ws = make_workspace(tmp_path / "ws", simulator.base_url)
    for name, value in ws.env.items():
        monkeypatch.setenv(name, value)
    return ws


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any CRM setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in CRM_ENV_VARS}
    env.update(extra)
    return env


def dagster_cli(
    *args: str, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the real `dagster` CLI of this environment from the repo root."""
    return venv_cli("dagster", *args, env=env, timeout=timeout)


def venv_cli(
    name: str, *args: str, env: dict[str, str], timeout: float = 300, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess:
    """Run console script `name` of this environment (dagster, dg, crm-demo...) in `cwd`, by
    default the repo root."""
    exe = Path(sys.executable).with_name(name)
    return subprocess.run(
        [str(exe), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sync_in_process(
    selection: list[str] | None = None,
    *,
    checks: bool = False,
    full_refresh: bool = False,
    rebuild: bool = False,
) -> Any:
    """The definitions' assets (and, with `checks`, their checks) materialized in this process
    on the instance of DAGSTER_HOME, as the UI or the CLI would run them."""
    import crm_assets  # the definitions, built once per test session like a code location

    defs = crm_assets.defs
    return materialize(
        [*defs.assets, *(defs.asset_checks if checks else [])],
        resources=defs.resources,
        selection=selection,
        instance=DagsterInstance.get(),
        run_config=RunConfig(
            ops={"crm_sync_assets": {"config": {"full_refresh": full_refresh, "rebuild": rebuild}}}
        ),
        raise_on_error=False,
    )


def materialized_metadata(result: Any) -> dict[str, Any]:
    """Resource name -> metadata of its materialization in an in-process result."""
    return {
        e.asset_key.path[-1]: e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }


def check_results(result: Any) -> dict[str, tuple[bool, str]]:
    """`crm/<resource>:<check>` -> (passed, severity) for every check evaluated in the run."""
    out = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            key = AssetCheckKey(evaluation.asset_key, evaluation.check_name)
            out[key.to_user_string()] = (evaluation.passed, evaluation.severity.value)
    return out


def materialize_cli(selection: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`dagster asset materialize -m crm_assets --select <selection>`, as a user types it."""
    return dagster_cli("asset", "materialize", "-m", "crm_assets", "--select", selection, env=env)


def assert_same_records(ws: Workspace, simulator: CRMSimulator, resource: str) -> None:
    """Every record the CRM serves is in the warehouse once, with the same values (compared as
    values, whatever type the data gave each column)."""
    rows = ws.rows(resource)
    expected = simulator.records(resource)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), f"{resource}: duplicate ids in the warehouse"
    assert sorted(map(str, ids)) == sorted(str(r["id"]) for r in expected)
    by_id = {row["id"]: row for row in rows}
    for record in expected:
        differences = record_differences(record, by_id[record["id"]])
        assert not differences, f"{resource} id={record['id']}: {differences}"

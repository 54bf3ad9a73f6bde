"""Layer 4: the real `dagster` CLI as a user runs it, in a subprocess."""

from __future__ import annotations

from pathlib import Path

from crm_assets_tests.conftest import (
    ACCESS_KEY,
    API_KEY,
    Workspace,
    assert_same_records,
    clean_env,
    every_profile,
    materialize_cli,
)
from crm_simulator import CRMSimulator


def test_materialize_one_asset_from_the_cli(workspace: Workspace, simulator: CRMSimulator) -> None:
    simulator.reset_requests()
    done = materialize_cli("crm/contacts", env=clean_env(**workspace.env))
    assert done.returncode == 0, done.stderr[-3000:]
    assert workspace.count("contacts") == simulator.count("contacts")
    assert_same_records(workspace, simulator, "contacts")
    assert {r.path for r in simulator.requests()} == {"/v1/contacts"}
    output = done.stdout + done.stderr
    assert API_KEY not in output and ACCESS_KEY not in output


@every_profile
def test_materialize_all_from_the_cli_twice(workspace: Workspace, simulator: CRMSimulator) -> None:
    for _ in range(2):
        done = materialize_cli("*", env=clean_env(**workspace.env))
        assert done.returncode == 0, done.stderr[-3000:]
        for name in ("customers", "contacts", "cases", "leads", "opportunities"):
            assert workspace.count(name) == simulator.count(name)
            assert_same_records(workspace, simulator, name)
        # The file is whole once the command has returned: its last checkpoint, left to the
        # background while the checks ran, is done, with nothing left in DuckDB's log.
        wal = workspace.duckdb_path.with_name(workspace.duckdb_path.name + ".wal")
        assert workspace.duckdb_path.exists() and not wal.exists()


def test_materialize_all_with_a_process_per_step(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    # The sync and the checks in processes of their own: each takes the warehouse's locks in
    # turn, and the sync's process ends with its last checkpoint done.
    done = materialize_cli("*", env=clean_env(**workspace.env, CRM_EXECUTOR="multiprocess"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Launching subprocess for" in done.stderr  # a process per step, not one for all
    for name in ("customers", "contacts", "cases", "leads", "opportunities"):
        assert_same_records(workspace, simulator, name)
    wal = workspace.duckdb_path.with_name(workspace.duckdb_path.name + ".wal")
    assert not wal.exists()


def test_cli_without_secrets_names_the_missing_variable(
    workspace: Workspace, tmp_path: Path
) -> None:
    env = clean_env(**workspace.env)
    del env["CRM_ACCESS_KEY"]
    done = materialize_cli("*", env=env)
    assert done.returncode != 0
    assert "CRM_ACCESS_KEY is not set: export CRM_ACCESS_KEY where" in done.stderr
    assert not workspace.duckdb_path.exists()

"""`crm-discover`: the declared schema of a CRM, written from a sample of its live API."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from crm_assets.api import SEED_API, declare, load_declaration, resource_names
from crm_assets_tests.conftest import ACCESS_KEY, API_KEY, SMALL_COUNTS, clean_env, venv_cli
from crm_simulator import CRMSimulator


def discover(simulator: CRMSimulator, output: Path) -> subprocess.CompletedProcess:
    env = clean_env(CRM_BASE_URL=simulator.base_url, CRM_API_KEY=API_KEY, CRM_ACCESS_KEY=ACCESS_KEY)
    return venv_cli("crm-discover", "--output", str(output), "--pages", "2", env=env)


def test_discover_writes_the_declared_schema_of_the_crm(tmp_path: Path) -> None:
    output = tmp_path / "declared.yaml"
    with CRMSimulator(SMALL_COUNTS, api_key=API_KEY, access_key=ACCESS_KEY) as simulator:
        done = discover(simulator, output)
    assert done.returncode == 0, done.stderr
    assert API_KEY not in done.stdout + done.stderr + output.read_text()
    assert ACCESS_KEY not in done.stdout + done.stderr + output.read_text()
    declaration = load_declaration(output)
    assert list(declaration) == resource_names(SEED_API)
    customers = declaration["customers"]
    assert customers["columns"]["id"] == {
        "data_type": "bigint",
        "nullable": False,
        "primary_key": True,
        "description": "Customer id, unique within the CRM.",  # kept from the bundled file
    }
    assert customers["columns"]["updated_at"]["data_type"] == "timestamp"
    assert customers["columns"]["address"]["data_type"] == "json"
    assert customers["columns"]["email"]["nullable"] is True
    assert customers["incremental"] == {"cursor_path": "updated_at", "start_param": "updated_since"}
    assert "incremental" not in declaration["cases"]  # one page, nothing to filter
    assert {
        (r["columns"][0], r["referenced_table"]) for r in declaration["opportunities"]["references"]
    } == {("customer_id", "customers"), ("contact_id", "contacts")}
    # The file is a declaration the project reads as it is.
    config = declare(SEED_API, declaration)
    assert config["resources"][0]["columns"]["id"]["primary_key"] is True


@pytest.mark.parametrize("profile", ["crm", "uuid"])
def test_discover_types_a_crm_unlike_the_simulator_s_default(tmp_path: Path, profile: str) -> None:
    output = tmp_path / "declared.yaml"
    with CRMSimulator(
        SMALL_COUNTS,
        api_key=API_KEY,
        access_key=ACCESS_KEY,
        profile=profile,
        strict_params=True,
        filter_param=None,
    ) as simulator:
        done = discover(simulator, output)
        sample = simulator.records("contacts")[0]
    assert done.returncode == 0, done.stderr
    declaration = load_declaration(output)
    contacts = declaration["contacts"]
    assert contacts["columns"]["id"]["data_type"] == "text"  # string ids stay strings
    assert set(sample) <= set(contacts["columns"])  # every field the CRM sends is declared
    # A CRM that knows no filter (and refuses unknown parameters) gets none.
    assert all("incremental" not in entry for entry in declaration.values())

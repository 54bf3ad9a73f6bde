"""Layer 1: the definitions load with no secrets and expose exactly the intended surface."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from dagster import AssetKey, FreshnessPolicy

from crm_assets.api import CRM_API, resource_names
from crm_assets.automation import freshness_policy, longest_gap
from crm_assets_tests.conftest import REPO_ROOT, clean_env

SURFACE_SCRIPT = """
import json, crm_assets
defs = crm_assets.defs
graph = defs.resolve_asset_graph()
out = {"assets": {}, "jobs": [], "schedules": {}, "sensors": [], "checks": [], "resources": []}
for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
    node = graph.get(key)
    policy = node.freshness_policy
    out["assets"][key.to_user_string()] = {
        "group": node.group_name,
        "kinds": sorted(node.kinds),
        "deps": sorted(k.to_user_string() for k in node.parent_keys),
        "freshness": type(policy).__name__ if policy else None,
        "fail_window_s": policy.fail_window.to_timedelta().total_seconds() if policy else None,
        "warn_window_s": policy.warn_window.to_timedelta().total_seconds() if policy else None,
        "columns": [c.name for c in node.metadata["dagster/column_schema"].columns],
    }
repo = defs.get_repository_def()
out["jobs"] = sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__"))
out["schedules"] = {s.name: {"cron": s.cron_schedule, "job": s.job_name, "tz": s.execution_timezone,
                             "status": s.default_status.value} for s in repo.schedule_defs}
out["sensors"] = sorted(s.name for s in repo.sensor_defs)
out["checks"] = sorted(k.to_user_string() for k in graph.asset_check_keys)
out["resources"] = sorted(defs.resources or {})
print(json.dumps(out))
"""


def load_surface(tmp_path: Path, **env: str) -> dict:
    """Load `crm_assets.defs` in a fresh interpreter with no CRM variable set, from an empty
    working directory and HOME, so nothing it reads or writes can hide."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", SURFACE_SCRIPT],
        env=clean_env(HOME=str(home), PYTHONPATH=str(REPO_ROOT), **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_definitions_surface_without_secrets(tmp_path: Path) -> None:
    surface = load_surface(tmp_path)
    day = timedelta(days=1).total_seconds()
    expected_assets = {
        f"crm/{name}": {
            "group": "crm",
            "kinds": ["dlt", "rest_api"],
            "deps": [],
            "freshness": "TimeWindowFreshnessPolicy",
            "fail_window_s": 2 * day,
            "warn_window_s": day + 3600,
            "columns": list(next(r for r in CRM_API["resources"] if r["name"] == name)["columns"]),
        }
        for name in ["cases", "contacts", "customers", "leads", "opportunities"]
    }
    assert surface["assets"] == expected_assets
    assert surface["jobs"] == ["crm_checks", "crm_sync"]
    assert surface["schedules"] == {
        "crm_sync_schedule": {
            "cron": "0 2 * * *",
            "job": "crm_sync",
            "tz": "UTC",
            "status": "RUNNING",
        },
        "crm_reconcile_schedule": {
            "cron": "0 3 * * 0",
            "job": "crm_sync",
            "tz": "UTC",
            "status": "RUNNING",
        },
        "crm_checks_schedule": {
            "cron": "30 * * * *",
            "job": "crm_checks",
            "tz": "UTC",
            "status": "RUNNING",
        },
    }
    assert surface["sensors"] == []
    every = (
        "column_schema_change",
        "dagster_row_count_bounds_check",
        "deletes",
        "primary_key",
        "schema_drift",
    )
    referencing = ("cases", "contacts", "leads", "opportunities")
    assert surface["checks"] == sorted(
        [f"crm/{name}:{check}" for name in resource_names() for check in every]
        + [f"crm/{name}:references" for name in referencing]
    )
    assert surface["resources"] == ["crm_credentials", "crm_requests", "crm_warehouse", "dlt"]


def test_import_writes_nothing(tmp_path: Path) -> None:
    load_surface(tmp_path)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert written == ["home"], "loading the definitions wrote files"


def test_schedule_cron_and_freshness_follow_crm_sync_cron(tmp_path: Path) -> None:
    surface = load_surface(tmp_path, CRM_SYNC_CRON="0 * * * *")
    assert surface["schedules"]["crm_sync_schedule"]["cron"] == "0 * * * *"
    customers = surface["assets"]["crm/customers"]
    assert customers["fail_window_s"] == 2 * 3600
    assert customers["warn_window_s"] == 3600 + 15 * 60


def test_invalid_cron_is_one_clear_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", "import crm_assets"],
        env=clean_env(HOME=str(home), PYTHONPATH=str(REPO_ROOT), CRM_SYNC_CRON="every day"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "CRM_SYNC_CRON is not a valid cron expression: 'every day'" in done.stderr


def test_freshness_allows_the_schedules_longest_gap() -> None:
    # Weekdays only: Friday to Monday is three days, and freshness must not flag that weekend.
    assert longest_gap("0 2 * * 1-5") == timedelta(days=3)
    policy = freshness_policy("0 2 * * 1-5")
    assert isinstance(policy, FreshnessPolicy)
    assert policy.fail_window.to_timedelta() == timedelta(days=6)


def test_resource_names_come_from_the_api_config() -> None:
    assert resource_names() == ["customers", "contacts", "cases", "leads", "opportunities"]
    assert AssetKey(["crm", "customers"]).to_user_string() == "crm/customers"

"""`crm-demo` (what `make demo` runs) as a newcomer sees it: a short screen, the full log on disk.

The demo runs the real `dagster asset materialize` CLI, so these are end-to-end runs in a
subprocess, each with its warehouse, dlt state and DAGSTER_HOME under tmp_path.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import duckdb

from crm_assets.api import resource_names
from crm_assets_tests.conftest import clean_env, venv_cli
from crm_simulator import DEFAULT_COUNTS

DEMO = Path(sys.executable).with_name("crm-demo")
SCALE = 0.2  # 200 customers ... 600 contacts: every resource still spans several pages
MAX_LINES = 40
TABLE_ROW = re.compile(r"^  crm\.(?P<name>\w+) +(?P<rows>[\d,]+) +(?P<in_crm>[\d,]+)$", re.M)
LOG_LINE = re.compile(r"^Full run log: (?P<path>.+)$", re.M)


def run_demo(tmp_path: Path, duckdb_path: Path) -> subprocess.CompletedProcess:
    env = clean_env(
        CRM_DUCKDB_PATH=str(duckdb_path),
        CRM_PIPELINES_DIR=str(tmp_path / "pipelines"),
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
    )
    return venv_cli("crm-demo", "--scale", str(SCALE), env=env)


def number(text: str) -> int:
    return int(text.replace(",", ""))


def test_demo_prints_progress_and_the_table_and_keeps_the_full_log(tmp_path: Path) -> None:
    duckdb_path = tmp_path / "warehouse.duckdb"
    done = run_demo(tmp_path, duckdb_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    screen = done.stdout + done.stderr
    assert len(screen.splitlines()) < MAX_LINES, screen
    assert " - dagster - DEBUG - " not in screen  # the run log is in the file, not on screen

    expected = {name: round(DEFAULT_COUNTS[name] * SCALE) for name in resource_names()}
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        loaded = {
            name: con.execute(f'SELECT count(*) FROM crm."{name}"').fetchone()[0]
            for name in resource_names()
        }
    assert loaded == expected

    # One progress line per resource, its last one saying every record was fetched.
    for name, n in expected.items():
        assert re.search(rf"^  {name}: [\d,]+ pages?, {n:,}/{n:,} records fetched$", screen, re.M)
    # The table: rows in the warehouse next to records in the CRM, as loaded.
    table = {
        m["name"]: (number(m["rows"]), number(m["in_crm"])) for m in TABLE_ROW.finditer(screen)
    }
    assert table == {name: (loaded[name], expected[name]) for name in resource_names()}

    match = LOG_LINE.search(done.stdout)
    assert match, screen
    log_path = Path(match["path"])
    assert log_path == tmp_path / "demo-run.log"
    log = log_path.read_text()
    # The CLI's whole output: Dagster's debug run log from start to end, and its stderr warnings.
    for marker in ("RUN_START", "STEP_START", "ASSET_MATERIALIZATION", "RUN_SUCCESS"):
        assert marker in log
    assert "SupersessionWarning" in log
    for name in resource_names():
        assert f"Asset check 'primary_key' on 'crm/{name}' passed." in log
    passed = re.findall(r"ASSET_CHECK_EVALUATION - Asset check .* passed\.", log)
    assert f"; {len(passed)} checks passed." in screen, screen
    assert len(log.splitlines()) > 3 * len(screen.splitlines())


def test_demo_failure_shows_the_error_and_the_log(tmp_path: Path) -> None:
    # A directory where the DuckDB file should be: the load step fails, as it would on a file
    # another process holds open.
    duckdb_path = tmp_path / "warehouse.duckdb"
    duckdb_path.mkdir()
    done = run_demo(tmp_path, duckdb_path)
    assert done.returncode != 0
    screen = done.stdout + done.stderr
    assert len(screen.splitlines()) < MAX_LINES, screen
    assert "crm-demo: the sync failed" in done.stderr
    # The cause, from the traceback at the end of the run log, not only "Materialization failed".
    assert "Is a directory" in done.stderr
    match = LOG_LINE.search(done.stderr)
    assert match, screen
    log = Path(match["path"]).read_text()
    assert "RUN_FAILURE" in log and "Is a directory" in log

"""First contact: the errors a person meets first are one readable line that names the fix, in
the CLI's output and in the run log the UI shows; and a long sync reports its progress.

The UI half launches runs through the webserver's GraphQL API, as the launchpad does, against
`dagster dev` (webserver and daemon in one command, the newcomer's way in) started without
CRM_API_KEY; the runs that must get past that supply credentials in run config (the launchpad's
way to override a resource's settings).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from crm_assets_tests.conftest import (
    ACCESS_KEY,
    API_KEY,
    SMALL_COUNTS,
    Workspace,
    clean_env,
    dagster_cli,
    make_workspace,
)
from crm_assets_tests.processes import (
    REPO_ROOT,
    Webserver,
    all_asset_keys,
    dagster_dev,
    free_port,
    write_instance_yaml,
)
from crm_simulator import CRMSimulator

MISSING_API_KEY = "CRM_API_KEY is not set: export CRM_API_KEY where dagster dev, the daemon"


def materialize(env: dict[str, str], *select: str) -> subprocess.CompletedProcess:
    """`dagster asset materialize`; by default of one asset, which meets every error here."""
    return dagster_cli(
        "asset",
        "materialize",
        "-m",
        "crm_assets",
        "--select",
        ",".join(select) or "crm/customers",
        env=env,
    )


def lines_with(output: str, *parts: str) -> list[str]:
    """The lines of `output` that hold every one of `parts`: cause and fix on one line."""
    return [line for line in output.splitlines() if all(p in line for p in parts)]


def assert_no_secret(text: str) -> None:
    assert API_KEY not in text and ACCESS_KEY not in text


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_missing_variable_is_named_before_anything_runs(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    env = clean_env(**workspace.env)
    del env["CRM_API_KEY"]
    simulator.reset_requests()
    done = materialize(env)
    assert done.returncode != 0
    assert lines_with(done.stderr, MISSING_API_KEY)
    assert simulator.requests() == []
    assert not workspace.duckdb_path.exists()


def test_cli_unreachable_crm_says_where_and_what_to_check(workspace: Workspace) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    env = clean_env(**{**workspace.env, "CRM_BASE_URL": nobody})
    done = materialize(env)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    found = lines_with(output, "connection refused", f"nothing answers at {nobody}", "CRM_BASE_URL")
    assert found, output[-3000:]
    assert_no_secret(output)


@pytest.mark.parametrize(
    ("variable", "wrong", "status"),
    [("CRM_API_KEY", "sk-wrong-key", "HTTP 401"), ("CRM_ACCESS_KEY", "ak-wrong-key", "HTTP 403")],
)
def test_cli_wrong_key_says_which_key(
    workspace: Workspace, variable: str, wrong: str, status: str
) -> None:
    env = clean_env(**{**workspace.env, variable: wrong})
    done = materialize(env)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert lines_with(output, status, f"check {variable}"), output[-3000:]
    assert wrong not in output  # a wrong key is still a secret
    assert_no_secret(output)


def test_simulator_on_a_port_in_use_is_one_line(simulator: CRMSimulator) -> None:
    """A second simulator on the first one's port (`make demo` twice, say)."""
    port = int(simulator.base_url.rsplit(":", 1)[1].split("/")[0])
    done = subprocess.run(
        [sys.executable, "-m", "crm_simulator", "--port", str(port)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert f"port {port} is in use" in line and "--port 0" in line, line


def test_long_sync_reports_progress_at_a_sane_rate(tmp_path: Path) -> None:
    """30 pages per resource, fetched one at a time with some latency (6 s or more, past the
    5 s reporting interval): the log shows "N pages, X/Y records fetched" lines per resource
    at most every 5 s, not one per page.

    The rate is read from the lines' own timestamps: how many lines there are depends on how
    long the machine takes, the spacing between them does not."""
    counts = {"customers": 3000, "contacts": 3000}
    with CRMSimulator(counts, api_key=API_KEY, access_key=ACCESS_KEY, latency_ms=200) as sim:
        ws = make_workspace(tmp_path / "ws", sim.base_url)
        env = clean_env(**ws.env, CRM_CONCURRENCY="1")
        done = materialize(env, "crm/customers", "crm/contacts")
        assert done.returncode == 0, done.stderr[-3000:]
        output = done.stdout + done.stderr
        for name, total in counts.items():
            pattern = re.compile(
                rf"^(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d) .*"
                rf"{name}: (\d+) pages, ([\d,]+)/{total:,} records fetched",
            )
            progress = [pattern.search(line) for line in output.splitlines()]
            progress = [m for m in progress if m]
            at = [datetime.fromisoformat(m.group(1)) for m in progress]
            pages = [int(m.group(2)) for m in progress]
            records = [int(m.group(3).replace(",", "")) for m in progress]
            assert pages and pages[-1] == total // 100 and records[-1] == total, progress
            assert len(pages) >= 2, "no progress line before the end"
            assert pages == sorted(pages) and records == sorted(records)
            # Every line but the closing one waits out the interval since the one before.
            # (Whole seconds in the log: 5 s apart shows as 4 s at the least.)
            gaps = [(b - a).total_seconds() for a, b in zip(at[:-2], at[1:-1], strict=True)]
            assert all(gap >= 4 for gap in gaps), f"lines {gaps} s apart for {total // 100} pages"
        assert ws.count("customers") == counts["customers"]


# -- the UI's run log ----------------------------------------------------------------------------


@dataclass
class Unconfigured:
    server: Webserver
    crm_url: str


@pytest.fixture(scope="module")
def unconfigured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unconfigured]:
    """`dagster dev` as a newcomer starts it: CRM_API_KEY not set."""
    with CRMSimulator(SMALL_COUNTS, api_key=API_KEY, access_key=ACCESS_KEY) as simulator:
        ws = make_workspace(tmp_path_factory.mktemp("first-contact"), simulator.base_url)
        write_instance_yaml(ws.dagster_home)
        env = clean_env(**ws.env)
        del env["CRM_API_KEY"]
        with dagster_dev(env, ws.root / "logs") as server:
            yield Unconfigured(server, simulator.base_url)


def credentials(base_url: str, api_key: str) -> dict:
    """Run config for the credentials resource. It replaces the resource's whole config, so
    every field is given; none of them is a real secret (the simulator checks the api key
    before the access key)."""
    config = {"base_url": base_url, "api_key": api_key, "access_key": "ak-not-checked"}
    return {"resources": {"crm_credentials": {"config": config}}}


def test_ui_run_log_shows_the_wrong_key_in_one_line(unconfigured: Unconfigured) -> None:
    server = unconfigured.server
    run_id = server.launch_assets(
        all_asset_keys(), credentials(unconfigured.crm_url, "sk-wrong-key")
    )
    assert server.wait_for_run(run_id) == "FAILURE"
    messages = server.run_messages(run_id)
    found = [m for m in messages if "HTTP 401" in m and "check CRM_API_KEY" in m]
    assert found, messages
    assert all("\n" not in m for m in found if m.startswith("customers: "))
    assert not any("sk-wrong-key" in m for m in messages)


def test_ui_run_log_shows_an_unreachable_crm_in_one_line(unconfigured: Unconfigured) -> None:
    server = unconfigured.server
    nobody = f"http://127.0.0.1:{free_port()}"
    run_id = server.launch_assets(all_asset_keys(), credentials(nobody, "sk-any-key"))
    assert server.wait_for_run(run_id) == "FAILURE"
    messages = server.run_messages(run_id)
    found = [m for m in messages if f"nothing answers at {nobody}; check CRM_BASE_URL" in m]
    assert found, messages


def test_ui_run_log_names_a_missing_variable_in_one_line(unconfigured: Unconfigured) -> None:
    """With CRM_API_KEY unset where the code location runs, the run starts and fails at once;
    its log, as the UI's run page shows it, names the variable and says what to do."""
    server = unconfigured.server
    run_id = server.launch_assets(all_asset_keys())
    assert server.wait_for_run(run_id) == "FAILURE"
    messages = server.run_messages(run_id)
    found = [m for m in messages if MISSING_API_KEY in m]
    assert found, messages

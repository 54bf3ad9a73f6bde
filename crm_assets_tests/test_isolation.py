"""Isolation: a failing resource does not stop the others, and overlapping runs never collide."""

from __future__ import annotations

import fcntl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from crm_assets.api import resource_names
from crm_assets.resources import CRMWarehouse
from crm_assets.sync_lock import SyncLockTimeout, exclusive_sync, sync_lock_paths
from crm_assets_tests.conftest import Workspace, assert_same_records, materialized_metadata
from crm_assets_tests.fault_support import (
    DAGSTER_EXE,
    MATERIALIZE_ALL,
    REPO_ROOT,
    ListLog,
    cli_env,
    duplicates,
    materialize_all,
    open_instance,
    run_summaries,
    step_failure_message,
    table_ids,
)
from crm_simulator import CRMSimulator, Faults

WAITING = "another sync holds"


def test_one_failing_resource_does_not_stop_the_other_four(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    simulator.faults = Faults(seed=3, rate_500=1.0, only_resources=("leads",))
    result = materialize_all()
    assert not result.success
    loaded = set(materialized_metadata(result))
    assert loaded == set(resource_names()) - {"leads"}
    for name in loaded:
        assert_same_records(workspace, simulator, name)
    assert table_ids(workspace.duckdb_path, "leads") == []
    message = step_failure_message(result)
    assert "1 of 5 CRM resources failed: leads: HTTP 500" in message
    assert "GET /v1/leads" in message and "gave up after" in message

    # The fault is gone: the next run loads leads too, and nothing twice.
    simulator.faults = Faults()
    assert materialize_all().success
    for name in resource_names():
        assert_same_records(workspace, simulator, name)


def _lock_held(path: Path) -> bool:
    if not path.exists():
        return False
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def _run_logged(dagster_home: Path, text: str) -> bool:
    """Whether any run of the instance has logged a message containing `text`."""
    with open_instance(dagster_home) as instance:
        return any(
            text in (entry.user_message or "")
            for run in instance.get_runs()
            for entry in instance.all_logs(run.run_id)
        )


def test_overlapping_cli_runs_are_serialized_and_both_load_exactly(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    """A manual run is mid-extract when a second (scheduled) one starts on the same instance,
    pipelines folder and DuckDB file: the second waits for the lock, then both succeed."""
    # Every request answers 503 until the test lifts the fault: the first run stays in extract,
    # retrying, for as long as the test needs, however slow the machine.
    env = cli_env(workspace.env, CRM_REQUEST_MAX_ATTEMPTS="100000")
    [pipeline_lock, _] = sync_lock_paths(
        CRMWarehouse(
            duckdb_path=str(workspace.duckdb_path), pipelines_dir=str(workspace.pipelines_dir)
        )
    )
    simulator.faults = Faults(rate_503=1.0)

    logs = [workspace.root / "first.log", workspace.root / "second.log"]

    def start(log: Path) -> subprocess.Popen[bytes]:
        # Output to a file, not a pipe: a full pipe would stall a run that holds the lock.
        with log.open("wb") as out:
            return subprocess.Popen(
                [str(DAGSTER_EXE), *MATERIALIZE_ALL],
                env=env,
                cwd=REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    first = start(logs[0])
    second = None
    try:
        # A request reaching the CRM means the first run is extracting, so holds the lock
        # (probing the lock itself could, for an instant, make the first run wait).
        _wait_for(lambda: bool(simulator.requests()), 300, "the first run to take the lock")
        assert _lock_held(pipeline_lock)
        second = start(logs[1])
        # The second run reaches the lock while the first still holds it...
        _wait_for(lambda: _run_logged(workspace.dagster_home, WAITING), 300, "the second to wait")
        assert first.poll() is None, "the first run ended before the second had to wait"
        simulator.faults = Faults()  # ...and gets it once the first finishes.
        first.wait(timeout=300)
        second.wait(timeout=300)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    out_first, out_second = (log.read_text() for log in logs)
    runs = run_summaries(workspace.dagster_home)
    assert len(runs) == 2
    # The sync step of each run succeeded and materialized all five assets. (The run's exit code
    # also covers steps downstream of the sync, such as asset checks, which are not about this.)
    for run, out in zip(runs, (out_first, out_second), strict=True):
        assert run["steps"]["crm_sync_assets"] == "STEP_SUCCESS", out[-3000:]
        assert sorted(run["assets"]) == sorted(resource_names())
    # The syncs: the first never waited, the second did. (The first run's check step may wait
    # for the second's sync in turn: that is the lock doing its job, whatever the timing.)
    first_sync, second_sync = (r["step_messages"].get("crm_sync_assets", []) for r in runs)
    assert first_sync and second_sync
    assert not any(WAITING in m for m in first_sync)
    assert any(WAITING in m for m in second_sync)
    assert any("after the other sync finished" in m for m in second_sync)
    for name in resource_names():
        assert duplicates(table_ids(workspace.duckdb_path, name)) == 0
        assert_same_records(workspace, simulator, name)


def test_a_run_that_cannot_get_the_lock_fails_without_touching_anything(
    workspace: Workspace, simulator: CRMSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_SYNC_LOCK_TIMEOUT", "1")
    simulator.reset_requests()
    lock = sync_lock_paths(CRMWarehouse())[0]
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # as a sync in another process would
        result = materialize_all()
    assert not result.success
    message = step_failure_message(result)
    assert f"another sync still holds {lock} after 1 s" in message
    assert simulator.requests() == []
    assert not workspace.duckdb_path.exists()
    # Released by its holder, the lock is there for the next run.
    assert materialize_all().success


def _sync_that_leaves_work(
    warehouse: CRMWarehouse, log: ListLog, order: list[str]
) -> tuple[threading.Thread, threading.Event]:
    """A sync's block that leaves work in the background (as its last checkpoint); the work
    ends when the returned event is set."""
    finish = threading.Event()

    def checkpoint() -> None:
        finish.wait(10)
        order.append("background work done")

    with exclusive_sync(warehouse, log) as hold:
        worker = hold.in_background(checkpoint, "test-checkpoint")
    return worker, finish


def test_work_a_sync_leaves_running_keeps_the_warehouse_locked_until_it_ends(
    workspace: Workspace,
) -> None:
    warehouse = CRMWarehouse()
    paths = sync_lock_paths(warehouse)
    assert len(paths) == 2  # the pipeline folder's and the DuckDB file's
    log = ListLog()
    order: list[str] = []
    worker, finish = _sync_that_leaves_work(warehouse, log, order)
    # The sync's block is over, its work is not: any other holder still finds both locks taken.
    assert worker.is_alive()
    assert all(_lock_held(path) for path in paths)
    threading.Timer(0.5, finish.set).start()
    # The next holder in this process waits for that work, not for a poll of the lock.
    with exclusive_sync(warehouse, log, timeout=5):
        order.append("next holder")
        assert all(_lock_held(path) for path in paths)
    assert order == ["background work done", "next holder"]
    assert not any(_lock_held(path) for path in paths)
    assert not any(WAITING in line for line in log.lines)


def test_a_sync_in_progress_in_this_process_is_waited_for_like_any_other(
    workspace: Workspace,
) -> None:
    warehouse = CRMWarehouse()
    log = ListLog()
    with (
        exclusive_sync(warehouse, log),
        pytest.raises(SyncLockTimeout),
        exclusive_sync(warehouse, log, timeout=0.5),
    ):
        pass
    assert any(WAITING in line for line in log.lines)
    assert not any(_lock_held(path) for path in sync_lock_paths(warehouse))


def test_the_checks_read_beside_the_work_a_sync_left_and_end_after_it(
    workspace: Workspace,
) -> None:
    warehouse = CRMWarehouse()
    paths = sync_lock_paths(warehouse)
    log = ListLog()
    order: list[str] = []
    _, finish = _sync_that_leaves_work(warehouse, log, order)
    with exclusive_sync(warehouse, log, timeout=5, reading=True):
        order.append("reading")  # at once, beside the work, under the same locks
        assert all(_lock_held(path) for path in paths)
        finish.set()
    # The reader's block ends once the work it ran beside has ended, and frees the locks.
    assert order == ["reading", "background work done"]
    assert not any(_lock_held(path) for path in paths)
    assert not any(WAITING in line for line in log.lines)

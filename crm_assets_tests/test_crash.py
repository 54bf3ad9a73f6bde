"""Crash safety: `dagster asset materialize` killed with SIGKILL during extract, normalize and
load; the next run, with no clean-up, finishes with exact counts and no duplicate ids.

The kill waits for the run to be held inside the phase, so that it lands there however slow or
busy the machine is: extract is held by the simulator answering 503 to every request (retried
without end) once it has served some pages; normalize and load by crash_hooks/sitecustomize.py,
which stops the run after the package's files are normalized but before it is committed, or as
the first load job starts, and says so in a file. The whole process group is killed (the CLI runs
the step in a child process; a crash of the machine or an OOM kill takes both), and the folder
state after the kill confirms which phase was hit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crm_assets.api import resource_names
from crm_assets_tests.conftest import ACCESS_KEY, API_KEY, make_workspace
from crm_assets_tests.fault_support import (
    DAGSTER_EXE,
    MATERIALIZE_ALL,
    REPO_ROOT,
    cli_env,
    duplicates,
    run_cli,
    table_ids,
)
from crm_simulator import CRMSimulator, Faults

# About 400 pages: extract is held a quarter of the way in, with every resource many pages long.
# (The holds, not the size, make the kills land: the phases may be as short as they like.)
CRASH_COUNTS = {
    "customers": 10_000,
    "contacts": 10_000,
    "cases": 1_500,
    "leads": 10_000,
    "opportunities": 9_500,
}


@pytest.fixture(scope="module")
def big_simulators() -> Iterator[dict[str, CRMSimulator]]:
    """One simulator per data profile, started when a test first asks for it."""
    started: dict[str, CRMSimulator] = {}
    yield started
    for sim in started.values():
        sim.stop()


@pytest.fixture
def big_simulator(big_simulators: dict[str, CRMSimulator], profile: str) -> CRMSimulator:
    if profile not in big_simulators:
        big_simulators[profile] = CRMSimulator(
            CRASH_COUNTS, api_key=API_KEY, access_key=ACCESS_KEY, profile=profile
        ).start()
    return big_simulators[profile]


def _entries(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.exists() else []


# Folder state after the kill that proves the phase: a predicate on the work dir.
def _killed_in_extract(work: Path) -> bool:
    return not _entries(work / "normalize" / "extracted") and not _entries(work / "load")


def _killed_in_normalize(work: Path) -> bool:
    return bool(_entries(work / "normalize" / "extracted")) and not any(
        _entries(work / "load" / sub) for sub in ("normalized", "loaded")
    )


def _killed_in_load(work: Path) -> bool:
    return any(
        _entries(p / "started_jobs") for p in _entries(work / "load" / "normalized")
    ) and not _entries(work / "load" / "loaded")


LANDED: dict[str, Callable[[Path], bool]] = {
    "extract": _killed_in_extract,
    "normalize": _killed_in_normalize,
    "load": _killed_in_load,
}
HOOKS = Path(__file__).resolve().parent / "crash_hooks"
# Pages served before extract is held: well under way, far from done (about 1,000 pages).
EXTRACT_PAGES = 100
HOLD_TIMEOUT_S = 300  # a 100,000-record sync on a busy 2-core machine, start-up included

# Every phase once and every data profile once: integer, string and UUID ids.
CRASHES = [("crm", "extract"), ("declared", "normalize"), ("uuid", "load")]


def _wait(condition: Callable[[], bool], proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + HOLD_TIMEOUT_S
    while not condition():
        assert proc.poll() is None, f"the run exited ({proc.returncode}) before {what}; see {log}"
        assert time.monotonic() < deadline, f"{what} not seen in {HOLD_TIMEOUT_S} s; see {log}"
        time.sleep(0.05)


def _kill_during(env: dict[str, str], sim: CRMSimulator, work: Path, phase: str, log: Path) -> None:
    """Start a sync, hold it in `phase`, SIGKILL its process group there."""
    hold_file = work.parent / "held"
    if phase == "extract":
        # Retried without end: the run cannot leave extract while every request fails.
        env = {**env, "CRM_REQUEST_MAX_ATTEMPTS": "100000"}
    else:
        pythonpath = os.pathsep.join(p for p in (str(HOOKS), env.get("PYTHONPATH")) if p)
        env = {
            **env,
            "PYTHONPATH": pythonpath,
            "CRM_TEST_HOLD_IN": phase,
            "CRM_TEST_HOLD_FILE": str(hold_file),
        }
    sim.reset_requests()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(DAGSTER_EXE), *MATERIALIZE_ALL],
            env=env,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the step's child process too
        )
    try:
        if phase == "extract":
            _wait(lambda: len(sim.requests()) >= EXTRACT_PAGES, proc, "pages served", log)
            sim.faults = Faults(rate_503=1.0)
            # Pages already answered may still be in flight; any request after this one fails.
            _wait(lambda: sim.faults_injected()["503"] > 0, proc, "a 503 answered", log)
        else:
            _wait(hold_file.exists, proc, f"the run held in {phase}", log)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        sim.faults = Faults()
    assert proc.returncode == -signal.SIGKILL
    _wait_for_group_gone(proc.pid)


def _wait_for_group_gone(pgid: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, "the killed run's processes did not go away"
        time.sleep(0.05)


@pytest.mark.parametrize(("profile", "phase"), CRASHES)
def test_sigkill_during_phase_then_rerun_loads_exactly_once(
    tmp_path: Path, big_simulator: CRMSimulator, phase: str
) -> None:
    ws = make_workspace(tmp_path / "ws", big_simulator.base_url)
    env = cli_env(ws.env, CRM_REQUEST_TIMEOUT="30")
    work = ws.pipelines_dir / "crm_sync"
    _kill_during(env, big_simulator, work, phase, ws.root / "killed.log")
    assert LANDED[phase](work), f"the kill did not land in {phase}; see {ws.root / 'killed.log'}"
    # No clean-up: the same folders, DuckDB file and instance, the lock file still there.
    done = run_cli(env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in resource_names():
        ids = table_ids(ws.duckdb_path, name)
        assert duplicates(ids) == 0, name
        assert len(ids) == big_simulator.count(name), name
        assert sorted(map(str, ids)) == sorted(str(r["id"]) for r in big_simulator.records(name)), (
            name
        )
    # The rerun left no package behind: nothing half-done waits for a later run.
    assert not _entries(work / "normalize" / "extracted")
    assert not _entries(work / "load" / "normalized")

"""Crash safety: `dagster asset materialize` killed with SIGKILL during extract, normalize and
load; the next run, with no clean-up, finishes with exact counts and no duplicate ids.

The phase is read from outside the process: extract is under way once the simulator has served
some pages and no package has reached dlt's `normalize/extracted` folder; normalize begins when
the extracted package appears there; load is under way while the normalized package has jobs in
`load/normalized/<id>/started_jobs`. The whole process group is killed (the CLI runs the step in
a child process; a crash of the machine or an OOM kill takes both), and the folder state after
the kill confirms which phase was hit: a missed window is retried, a bounded number of times.
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
from crm_simulator import CRMSimulator

# About 100,000 records: extract lasts seconds and load about half a second on 2 cores.
CRASH_COUNTS = {
    "customers": 25_000,
    "contacts": 25_000,
    "cases": 1_500,
    "leads": 25_000,
    "opportunities": 23_500,
}
ATTEMPTS = 3


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


def _extracting(sim: CRMSimulator, work: Path) -> bool:
    return len(sim.requests()) >= 100 and not _entries(work / "normalize" / "extracted")


def _normalizing(sim: CRMSimulator, work: Path) -> bool:
    return bool(_entries(work / "normalize" / "extracted"))


def _loading(sim: CRMSimulator, work: Path) -> bool:
    return any(_entries(p / "started_jobs") for p in _entries(work / "load" / "normalized"))


# Folder state after the kill that proves the phase: (description, predicate on the work dir)
def _killed_in_extract(work: Path) -> bool:
    return not _entries(work / "normalize" / "extracted") and not _entries(work / "load")


def _killed_in_normalize(work: Path) -> bool:
    return bool(_entries(work / "normalize" / "extracted")) and not any(
        _entries(work / "load" / sub) for sub in ("normalized", "loaded")
    )


def _killed_in_load(work: Path) -> bool:
    return bool(_entries(work / "load" / "normalized")) and not _entries(work / "load" / "loaded")


PHASES: dict[str, tuple[Callable[[CRMSimulator, Path], bool], Callable[[Path], bool]]] = {
    "extract": (_extracting, _killed_in_extract),
    "normalize": (_normalizing, _killed_in_normalize),
    "load": (_loading, _killed_in_load),
}

# Every phase once and every data profile once: integer, string and UUID ids.
CRASHES = [("crm", "extract"), ("declared", "normalize"), ("uuid", "load")]


def _kill_during(env: dict[str, str], sim: CRMSimulator, work: Path, phase: str, log: Path) -> bool:
    """Start a sync, SIGKILL its process group once `phase` is seen; whether the state left
    behind shows the kill landed in that phase."""
    seen, landed = PHASES[phase]
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
        deadline = time.monotonic() + 180
        while not seen(sim, work):
            if proc.poll() is not None:
                return False  # finished before the phase was seen
            assert time.monotonic() < deadline, f"{phase} never seen; see {log}"
            time.sleep(0.001)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    _wait_for_group_gone(proc.pid)
    return landed(work)


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
    landed = False
    for attempt in range(ATTEMPTS):
        ws = make_workspace(tmp_path / f"attempt{attempt}", big_simulator.base_url)
        env = cli_env(ws.env, CRM_REQUEST_TIMEOUT="30")
        work = ws.pipelines_dir / "crm_sync"
        if _kill_during(env, big_simulator, work, phase, ws.root / "killed.log"):
            landed = True
            break
    assert landed, f"no kill landed in {phase} in {ATTEMPTS} attempts"
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

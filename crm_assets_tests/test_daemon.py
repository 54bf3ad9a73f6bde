"""Layer 5: the real `dagster-daemon` on workspace.yaml runs the schedule and judges freshness.

With CRM_SYNC_CRON="* * * * *" the schedule ticks every minute and the freshness policy derived
from it (see automation.py) warns after 75 s and fails after 120 s without a materialization, so
one daemon session shows the whole cycle in about three minutes: the scheduled run launches and
succeeds, every asset reads PASS; the schedule is then stopped and one asset re-materialized by
hand, and the four left alone go to WARN and then FAIL while the fresh one stays PASS.
"""

from __future__ import annotations

import time

from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.definitions.freshness import FreshnessState

import crm_assets
from crm_assets.api import resource_names
from crm_assets_tests.conftest import Workspace, assert_same_records, clean_env, dagster_cli
from crm_assets_tests.processes import dagster_stack, wait_for, write_instance_yaml
from crm_simulator import CRMSimulator

EVERY_MINUTE = "* * * * *"
WARN_AFTER_S = 75  # 60 s gap + min(1 h, 60 s / 4)
FAIL_AFTER_S = 120  # two gaps
KEYS = {name: AssetKey(["crm", name]) for name in resource_names()}


def freshness(instance: DagsterInstance) -> dict[str, FreshnessState]:
    records = instance.get_freshness_state_records(list(KEYS.values()))
    return {
        name: records[key].freshness_state if key in records else FreshnessState.UNKNOWN
        for name, key in KEYS.items()
    }


def test_daemon_runs_the_schedule_and_flags_stale_assets(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    write_instance_yaml(workspace.dagster_home)
    env = clean_env(
        **workspace.env,
        CRM_SYNC_CRON=EVERY_MINUTE,
        # The freshness daemon's own interval (30 s by default) would blur a 75 s window.
        FRESHNESS_DAEMON_INTERVAL_SECONDS="5",
    )
    instance = DagsterInstance.get()  # the workspace's DAGSTER_HOME, as the daemon sees it
    # Other schedules (the hourly checks) stay out of the way: their runs would read the
    # warehouse while this test writes it.
    for schedule in crm_assets.defs.schedules or []:
        if schedule.name != "crm_sync_schedule":
            stopped = dagster_cli(
                "schedule", "stop", schedule.name, "-w", "workspace.yaml", env=env, timeout=120
            )
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    with dagster_stack(env, workspace.root / "logs", with_webserver=False):
        # 1. The schedule's next tick (at most a minute away) launches a run that succeeds.
        def scheduled_run_done():
            runs = instance.get_runs(
                RunsFilter(tags={"dagster/schedule_name": "crm_sync_schedule"}), limit=1
            )
            return runs[0] if runs and runs[0].is_finished else None

        run = wait_for(scheduled_run_done, 150, "the scheduled run to finish", interval=1)
        assert run.status == DagsterRunStatus.SUCCESS, run.status
        assert run.job_name == "crm_sync"
        for name in resource_names():
            assert workspace.count(name) == simulator.count(name)
            assert_same_records(workspace, simulator, name)
        synced_at = max(
            instance.get_latest_materialization_event(key).timestamp for key in KEYS.values()
        )

        # 2. Freshly synced assets pass their freshness policy.
        wait_for(
            lambda: set(freshness(instance).values()) == {FreshnessState.PASS},
            60,
            "every asset to read PASS after the scheduled run",
        )

        # 3. Stop the schedule, so that nothing syncs the assets any more ...
        stopped = dagster_cli(
            "schedule", "stop", "crm_sync_schedule", "-w", "workspace.yaml", env=env, timeout=120
        )
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        # ... except one asset, refreshed late enough to be inside its window when the others
        # pass their fail window.
        time.sleep(max(0.0, synced_at + 50 - time.time()))
        done = dagster_cli(
            "asset", "materialize", "-m", "crm_assets", "--select", "crm/cases", env=env
        )
        assert done.returncode == 0, done.stderr[-3000:]

        seen: dict[str, set[FreshnessState]] = {name: set() for name in KEYS}

        def four_stale_assets_fail() -> bool:
            states = freshness(instance)
            for name, state in states.items():
                seen[name].add(state)
            return all(states[n] == FreshnessState.FAIL for n in KEYS if n != "cases")

        wait_for(
            four_stale_assets_fail,
            FAIL_AFTER_S + 60,
            "the assets nobody synced to fail freshness",
            interval=1,
        )
        states = freshness(instance)
        assert time.time() - synced_at >= FAIL_AFTER_S
        assert states["cases"] == FreshnessState.PASS, states
        for name in KEYS:
            if name != "cases":
                # On the way from PASS to FAIL each went through WARN.
                assert FreshnessState.WARN in seen[name], (name, seen[name])
        # No second scheduled run: the stop held.
        assert (
            len(instance.get_runs(RunsFilter(tags={"dagster/schedule_name": "crm_sync_schedule"})))
            == 1
        )

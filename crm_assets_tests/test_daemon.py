"""Layer 5: the real `dagster-daemon` on workspace.yaml runs the schedule and judges freshness.

With CRM_SYNC_CRON="* * * * *" the schedule ticks every minute and the freshness policy derived
from it (see automation.py) warns after 75 s and fails after 120 s without a materialization, so
one daemon session shows the whole cycle in about four minutes: the scheduled run launches and
succeeds, every asset reads PASS; the schedule is then stopped and every asset goes to WARN; one
asset re-materialized by hand then reads PASS again, and the four left alone go on to FAIL while
the fresh one does not. Each step waits for the state the daemon reports, not for a clock.
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

        # A generous bound: the tick, then a whole sync, on a busy machine.
        run = wait_for(scheduled_run_done, 300, "the scheduled run to finish", interval=1)
        assert run.status == DagsterRunStatus.SUCCESS, run.status
        assert run.job_name == "crm_sync"
        for name in resource_names():
            assert workspace.count(name) == simulator.count(name)
            assert_same_records(workspace, simulator, name)
        synced_at = max(
            instance.get_latest_materialization_event(key).timestamp for key in KEYS.values()
        )

        # 2. Freshly synced assets pass their freshness policy (until WARN_AFTER_S has passed:
        # a daemon that first judges them later than that rightly says WARN).
        wait_for(
            lambda: set(freshness(instance).values()) == {FreshnessState.PASS},
            max(1.0, synced_at + WARN_AFTER_S - time.time()),
            "every asset to read PASS after the scheduled run",
        )

        # 3. Stop the schedule, so that nothing syncs the assets any more.
        stopped = dagster_cli(
            "schedule", "stop", "crm_sync_schedule", "-w", "workspace.yaml", env=env, timeout=120
        )
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr

        # 4. Unsynced, all five go to WARN ...
        wait_for(
            lambda: set(freshness(instance).values()) == {FreshnessState.WARN},
            WARN_AFTER_S + 120,
            "every asset to read WARN once the schedule stopped",
            interval=1,
        )
        assert time.time() - synced_at >= WARN_AFTER_S
        # ... and one asset refreshed by hand passes again, judged on its own materialization,
        # while the four left alone stay stale. (Refreshed now, cases warns again only 75 s
        # from here and fails 120 s from here, well after the others fail.)
        done = dagster_cli(
            "asset", "materialize", "-m", "crm_assets", "--select", "crm/cases", env=env
        )
        assert done.returncode == 0, done.stderr[-3000:]

        def cases_fresh_again() -> dict[str, FreshnessState] | None:
            states = freshness(instance)
            return states if states["cases"] == FreshnessState.PASS else None

        states = wait_for(cases_fresh_again, 120, "cases to read PASS after its refresh")
        assert all(states[n] != FreshnessState.PASS for n in KEYS if n != "cases"), states

        # 5. The four left alone go on to FAIL; cases, refreshed, does not.
        wait_for(
            lambda: all(
                s == FreshnessState.FAIL for n, s in freshness(instance).items() if n != "cases"
            ),
            FAIL_AFTER_S + 120,
            "the assets nobody synced to fail freshness",
            interval=1,
        )
        states = freshness(instance)
        assert time.time() - synced_at >= FAIL_AFTER_S
        assert states["cases"] != FreshnessState.FAIL, states
        # No second scheduled run: the stop held.
        assert (
            len(instance.get_runs(RunsFilter(tags={"dagster/schedule_name": "crm_sync_schedule"})))
            == 1
        )

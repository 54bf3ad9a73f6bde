"""When the CRM is synced: the asset job, its schedule, and freshness consistent with both."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from croniter import croniter
from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    FreshnessPolicy,
    ScheduleDefinition,
    define_asset_job,
)

CRM_GROUP = "crm"
QUALITY_CHECKS = "crm_quality_checks"  # the step of the checks that read the warehouse
DEFAULT_SYNC_CRON = "0 2 * * *"  # daily, at night (UTC)
DEFAULT_RECONCILE_CRON = "0 3 * * 0"  # weekly, Sunday night (UTC)

crm_sync_job = define_asset_job(
    name="crm_sync",
    selection=AssetSelection.groups(CRM_GROUP),
    description="Sync every CRM resource into the warehouse.",
)


crm_checks_job = define_asset_job(
    name="crm_checks",
    selection=AssetSelection.all_asset_checks(),
    description="Run the CRM data-quality checks without syncing.",
)

# Between syncs the checks still run on what the last sync left: the warehouse and the latest
# materialization's metadata. A sync that did not happen shows in the assets' freshness, which
# the daemon evaluates from their FreshnessPolicy.
crm_checks_schedule = ScheduleDefinition(
    name="crm_checks_schedule",
    job=crm_checks_job,
    cron_schedule="30 * * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Hourly run of the CRM checks alone.",
)


def _cron(env: str, default: str) -> str:
    """A schedule's cron from `env`. Read when the definitions load: a schedule is part of the
    definitions, so it cannot wait for a run; a wrong value fails with one line."""
    cron = os.environ.get(env) or default
    if not croniter.is_valid(cron):
        raise ValueError(f"{env} is not a valid cron expression: {cron!r}")
    return cron


def sync_cron() -> str:
    """The sync schedule's cron (CRM_SYNC_CRON)."""
    return _cron("CRM_SYNC_CRON", DEFAULT_SYNC_CRON)


def reconcile_cron() -> str:
    """The reconcile schedule's cron (CRM_RECONCILE_CRON)."""
    return _cron("CRM_RECONCILE_CRON", DEFAULT_RECONCILE_CRON)


def crm_reconcile_schedule(cron: str) -> ScheduleDefinition:
    """A full read of every resource, so that records deleted in the CRM are marked (incremental
    syncs cannot see deletes; see deletes.py)."""
    return ScheduleDefinition(
        name="crm_reconcile_schedule",
        job=crm_sync_job,
        cron_schedule=cron,
        execution_timezone="UTC",
        run_config={"ops": {"crm_sync_assets": {"config": {"full_refresh": True}}}},
        default_status=DefaultScheduleStatus.RUNNING,
        description="Weekly full read of every resource (CRM_RECONCILE_CRON): merges every "
        "record again and marks the ones deleted in the CRM.",
    )


def longest_gap(cron: str, sample: int = 64) -> timedelta:
    """The longest time between two ticks of `cron`, so that freshness never flags a gap the
    schedule itself leaves (a weekday-only cron has a three-day weekend gap)."""
    ticks = croniter(cron, datetime(2025, 1, 1, tzinfo=UTC))
    times = [ticks.get_next(datetime) for _ in range(sample)]
    return max(b - a for a, b in zip(times, times[1:], strict=False))


def freshness_policy(cron: str) -> FreshnessPolicy:
    """Warn when the scheduled sync is late (by an hour, or a quarter of a short interval); fail
    when a whole tick has been missed."""
    gap = longest_gap(cron)
    grace = min(timedelta(hours=1), gap / 4)
    return FreshnessPolicy.time_window(fail_window=2 * gap, warn_window=gap + grace)


def crm_sync_schedule(cron: str) -> ScheduleDefinition:
    return ScheduleDefinition(
        name="crm_sync_schedule",
        job=crm_sync_job,
        cron_schedule=cron,
        execution_timezone="UTC",
        # Running from the start: a deployed sync is meant to run. `dagster schedule stop
        # crm_sync_schedule` or the UI's toggle turns it off.
        default_status=DefaultScheduleStatus.RUNNING,
        description="Runs the crm_sync job; its cron comes from CRM_SYNC_CRON.",
    )

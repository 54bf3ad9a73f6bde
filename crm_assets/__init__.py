"""CRM → warehouse sync as Dagster assets. `defs` is the one place everything is assembled."""

from collections.abc import Mapping
from typing import Any

from dagster import Definitions
from dagster_dlt import DagsterDltResource

from crm_assets.api import CRM_API, validate_api_config
from crm_assets.assets import build_crm_assets
from crm_assets.automation import (
    crm_checks_job,
    crm_checks_schedule,
    crm_reconcile_schedule,
    crm_sync_job,
    crm_sync_schedule,
    freshness_policy,
    reconcile_cron,
    sync_cron,
)
from crm_assets.checks import build_crm_checks
from crm_assets.executors import crm_executor
from crm_assets.resources import CRMCredentials, CRMRequestSettings, CRMWarehouse


def build_definitions(api_config: Mapping[str, Any] = CRM_API) -> Definitions:
    """Everything, from the REST config: a resource added there becomes an asset with its
    checks and metadata, with no other change."""
    validate_api_config(api_config)  # a config dlt would refuse fails here, in one line
    cron = sync_cron()
    freshness = freshness_policy(cron)
    return Definitions(
        assets=[build_crm_assets(freshness=freshness, api_config=api_config)],
        asset_checks=build_crm_checks(api_config),
        jobs=[crm_sync_job, crm_checks_job],
        schedules=[
            crm_sync_schedule(cron),
            crm_reconcile_schedule(reconcile_cron()),
            crm_checks_schedule,
        ],
        executor=crm_executor(),  # CRM_EXECUTOR; in-process unless told otherwise
        resources={
            "dlt": DagsterDltResource(),
            # CRM_BASE_URL, CRM_API_KEY, CRM_ACCESS_KEY (or dlt's [sources.crm]): read when a
            # run starts, so a missing one fails that run in one line (see CRMCredentials).
            "crm_credentials": CRMCredentials(),
            "crm_warehouse": CRMWarehouse(),
            # Retries, timeouts and concurrency: fields shown in the UI, defaulting from CRM_*.
            "crm_requests": CRMRequestSettings(),
        },
    )


defs = build_definitions()

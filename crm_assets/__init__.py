"""CRM → warehouse sync as Dagster assets. `defs` is the one place everything is assembled."""

from dagster import Definitions, EnvVar
from dagster_dlt import DagsterDltResource

from crm_assets.assets import build_crm_assets
from crm_assets.automation import crm_sync_job, crm_sync_schedule, freshness_policy, sync_cron
from crm_assets.executors import crm_executor
from crm_assets.resources import CRMCredentials, CRMWarehouse

_cron = sync_cron()

defs = Definitions(
    assets=[build_crm_assets(freshness=freshness_policy(_cron))],
    jobs=[crm_sync_job],
    schedules=[crm_sync_schedule(_cron)],
    executor=crm_executor(),  # CRM_EXECUTOR; unset means Dagster's default
    resources={
        "dlt": DagsterDltResource(),
        "crm_credentials": CRMCredentials(
            base_url=EnvVar("CRM_BASE_URL"),
            api_key=EnvVar("CRM_API_KEY"),
            access_key=EnvVar("CRM_ACCESS_KEY"),
        ),
        "crm_warehouse": CRMWarehouse(),
    },
)

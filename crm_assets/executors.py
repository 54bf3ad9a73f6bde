"""Which executor runs the steps of a CRM run, chosen by CRM_EXECUTOR when the definitions load.

The executor is part of the definitions (like the schedule's cron), so it is read at load time.
Unset, the steps run in the run's own process: a sync is one step and its checks a second one
that waits for it, so Dagster's default of a fresh process per step buys no parallelism and
costs a Python start-up (dagster, dlt, pyarrow) per step, several seconds of every run.
`dagster_celery` is imported only when Celery is asked for.

    CRM_EXECUTOR        in_process (default) | multiprocess | celery
    CRM_CELERY_BROKER   the Celery broker (default pyamqp://guest@127.0.0.1//, RabbitMQ here)
    CRM_CELERY_BACKEND  the Celery result backend (default rpc://)
    CRM_CELERY_QUEUE    the queue steps are sent to; start workers with `-q` on the same name
                        (default dagster, dagster-celery's own default)
"""

from __future__ import annotations

import os

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

EXECUTOR_ENV = "CRM_EXECUTOR"
EXECUTOR_CHOICES = ("in_process", "multiprocess", "celery")
DEFAULT_CELERY_BROKER = "pyamqp://guest@127.0.0.1//"
DEFAULT_CELERY_BACKEND = "rpc://"
DEFAULT_CELERY_QUEUE = "dagster"


def celery_settings() -> dict[str, object]:
    """The celery executor's config from the environment; the same block, in a YAML file under
    `execution: config:`, is what `dagster-celery worker start -y` wants (see deploy/celery)."""
    return {
        "broker": os.environ.get("CRM_CELERY_BROKER") or DEFAULT_CELERY_BROKER,
        "backend": os.environ.get("CRM_CELERY_BACKEND") or DEFAULT_CELERY_BACKEND,
        "config_source": {
            "task_default_queue": os.environ.get("CRM_CELERY_QUEUE") or DEFAULT_CELERY_QUEUE
        },
    }


def crm_executor() -> ExecutorDefinition:
    """The executor CRM_EXECUTOR names; in-process when unset."""
    choice = (os.environ.get(EXECUTOR_ENV) or "").strip().lower().replace("-", "_")
    if not choice or choice == "in_process":
        return in_process_executor
    if choice == "multiprocess":
        return multiprocess_executor
    if choice == "celery":
        try:
            from dagster_celery import celery_executor
        except ImportError:
            raise ValueError(
                "CRM_EXECUTOR=celery needs dagster-celery: pip install 'crm-assets[celery]'"
            ) from None
        return celery_executor.configured(celery_settings(), name="celery")
    raise ValueError(
        f"{EXECUTOR_ENV} must be one of {', '.join(EXECUTOR_CHOICES)} (or unset), got {choice!r}"
    )

"""Past one machine: the crm_sync job on Dagster's Celery executor, through this machine's
RabbitMQ (127.0.0.1:5672, guest/guest), its step run by a Celery worker this test starts.

The worker listens on a queue named for this test only, so it cannot take another suite's tasks
and nobody else's worker can take ours.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import kombu
from dagster import DagsterEventType, DagsterInstance, EventRecordsFilter

from crm_assets.api import resource_names
from crm_assets_tests.conftest import Workspace, assert_same_records, clean_env, dagster_cli
from crm_assets_tests.processes import BIN, running, start, wait_for, write_instance_yaml
from crm_simulator import CRMSimulator

BROKER = "pyamqp://guest:guest@127.0.0.1:5672//"


@contextlib.contextmanager
def rabbitmq_cleanup(queue: str) -> Iterator[None]:
    """Celery declares a durable queue and exchange named `queue`; leave no trace in RabbitMQ."""
    try:
        yield
    finally:
        with kombu.Connection(BROKER, connect_timeout=10) as connection:
            channel = connection.default_channel
            channel.queue_delete(queue)
            channel.exchange_delete(queue)


def test_crm_sync_job_runs_on_a_celery_worker(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    queue = f"crm-test-{uuid.uuid4().hex[:10]}"
    config = workspace.root / "celery.yaml"
    config.write_text(
        "execution:\n  config:\n"
        f"    broker: {BROKER}\n"
        "    backend: rpc://\n"
        f"    config_source:\n      task_default_queue: {queue}\n"
    )
    env = clean_env(
        **workspace.env,
        CRM_EXECUTOR="celery",
        CRM_CELERY_BROKER=BROKER,
        CRM_CELERY_QUEUE=queue,
        # `dagster-celery worker start` runs `celery` from PATH.
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    write_instance_yaml(workspace.dagster_home)
    worker = start(
        "celery-worker",
        [
            str(BIN / "dagster-celery"),
            "worker",
            "start",
            "-A",
            "dagster_celery.app",
            "-y",
            str(config),
            "-q",
            queue,
            "-n",
            queue,
            "-l",
            "INFO",
            # One process: the step is a single multi-asset, and two cores are all there is.
            "--",
            "--concurrency=1",
        ],
        env,
        workspace.root / "logs",
    )
    with running(worker), rabbitmq_cleanup(queue):
        wait_for(
            lambda: "ready." in worker.log() or not worker.alive(),
            180,
            "the Celery worker to connect to RabbitMQ",
        )
        assert worker.alive(), worker.log()

        done = dagster_cli("job", "execute", "-m", "crm_assets", "-j", "crm_sync", env=env)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:] + worker.log()

    for name in resource_names():
        assert workspace.count(name) == simulator.count(name), name
        assert_same_records(workspace, simulator, name)
    # The step really ran in the worker: it reports itself in the run's event log.
    instance = DagsterInstance.get()
    (run,) = instance.get_runs()
    assert run.is_success
    engine_events = instance.get_event_records(
        EventRecordsFilter(DagsterEventType.ENGINE_EVENT), limit=100
    )
    messages = [r.event_log_entry.dagster_event.message or "" for r in engine_events]
    assert any("in celery worker" in m for m in messages), messages
    assert any(f'to queue "{queue}"' in m for m in messages), messages

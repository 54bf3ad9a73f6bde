"""Real Dagster processes for the end-to-end tests: the webserver, the daemon, a Celery worker.

Each process runs in its own process group (so the code servers and run workers it spawns stop
with it), logs to a file under the test's directory (shown when a wait fails), and is stopped in
teardown. Every wait here is for an event (a status, a log line, an answer) and is bounded,
generously: the bounds are for a machine that is slow or busy with other tests, not for the
usual case, and a wait that ends early costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests
from dagster import DagsterInstance

from crm_assets.api import resource_names

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOCATION = "crm_assets"  # workspace.yaml's python_module, which names the code location
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(requests.RequestException):
            value = probe()
            if value:
                return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Process:
    """A started command, its log file, and how to stop it with everything it spawned."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    # `dagster dev` shuts its children down on Ctrl-C; SIGTERM does not stop it promptly.
    stop_signal: signal.Signals = signal.SIGTERM

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            # Signal the whole group: dagster's code servers and run workers are children.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        # Whatever the leader left behind in its group goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


def start(
    name: str,
    args: Sequence[str],
    env: Mapping[str, str],
    log_dir: Path,
    cwd: Path = REPO_ROOT,
    stop_signal: signal.Signals = signal.SIGTERM,
) -> Process:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            list(args),
            env=dict(env),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Process(name, popen, log_path, stop_signal)


@contextlib.contextmanager
def running(*processes: Process) -> Iterator[None]:
    try:
        yield
    finally:
        for process in reversed(processes):
            process.stop()


def write_instance_yaml(dagster_home: Path, extra: str = "") -> None:
    """A dagster.yaml that keeps the tests quiet and quick: no telemetry, a fast run queue."""
    (dagster_home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nrun_queue:\n  dequeue_interval_seconds: 1\n" + extra
    )
    # Create the storage now: a webserver and a daemon that both find it missing race to create
    # it ("alembic_version has more than one head").
    with DagsterInstance.from_config(str(dagster_home)):
        pass


# -- the webserver and its GraphQL API -----------------------------------------------------------

LAUNCH_RUN = """
mutation Launch($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on PipelineNotFoundError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

RUN_STATUS = """
query Status($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } }
}
"""

RUN_LOGS = """
query Logs($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message level }
        ... on ExecutionStepFailureEvent { error { message } }
        ... on RunFailureEvent { error { message } }
        ... on EngineEvent { error { message } }
      }
    }
  }
}
"""

LOCATION_STATUS = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""

TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


@dataclass
class Webserver:
    url: str

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=30
        )
        # A mutation that fails with a PythonError comes back as HTTP 500 with a body.
        try:
            body = response.json()
        except ValueError:
            response.raise_for_status()
            raise
        assert "errors" not in body, body["errors"]
        return body["data"]

    def location_loaded(self) -> bool:
        entries = self.graphql(LOCATION_STATUS)["workspaceOrError"].get("locationEntries", [])
        for entry in entries:
            if entry["name"] == LOCATION and entry["loadStatus"] == "LOADED":
                located = entry["locationOrLoadError"] or {}
                if located.get("__typename") == "PythonError":
                    raise AssertionError(f"code location failed to load: {located['message']}")
                return True
        return False

    def try_launch_assets(
        self, keys: Sequence[Sequence[str]], run_config: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Launch a run of `keys` as the UI's "Materialize" button does: the implicit asset job
        with an asset selection. Returns the `launchRun` result, success or not."""
        params = {
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": "__repository__",
                "jobName": "__ASSET_JOB",
                "assetSelection": [{"path": list(k)} for k in keys],
                "assetCheckSelection": [],
            },
            "runConfigData": dict(run_config or {}),
            "mode": "default",
        }
        return self.graphql(LAUNCH_RUN, executionParams=params)["launchRun"]

    def launch_assets(
        self, keys: Sequence[Sequence[str]], run_config: Mapping[str, Any] | None = None
    ) -> str:
        """Launch a run of `keys` (see `try_launch_assets`); returns the run id."""
        result = self.try_launch_assets(keys, run_config)
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    def run_status(self, run_id: str) -> str:
        return self.graphql(RUN_STATUS, runId=run_id)["runOrError"]["status"]

    def wait_for_run(self, run_id: str, timeout: float = 300) -> str:
        return wait_for(
            lambda: status if (status := self.run_status(run_id)) in TERMINAL else None,
            timeout,
            f"run {run_id} to finish",
            interval=1,
        )

    def run_messages(self, run_id: str) -> list[str]:
        """Every message of the run's event log, as the UI's run page lists them."""
        events = self.graphql(RUN_LOGS, runId=run_id)["logsForRun"]["events"]
        messages: list[str] = []
        for event in events:
            if event.get("message"):
                messages.append(event["message"])
            if (event.get("error") or {}).get("message"):
                messages.append(event["error"]["message"])
        return messages


def all_asset_keys() -> list[list[str]]:
    return [["crm", name] for name in resource_names()]


def wait_until_serving(server: Webserver, process: Process, timeout: float = 300) -> None:
    """Bounded wait for the webserver to answer and the code location to be loaded."""

    def ready() -> bool:
        if not process.alive():
            raise AssertionError(f"{process.name} exited:\n{process.log()}")
        return requests.get(f"{server.url}/server_info", timeout=5).ok and server.location_loaded()

    try:
        wait_for(ready, timeout, f"{process.name} to serve the code location", interval=1)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{process.log()}") from None


@contextlib.contextmanager
def dagster_dev(env: Mapping[str, str], log_dir: Path) -> Iterator[Webserver]:
    """`dagster dev -w workspace.yaml`: webserver and daemon in one command, as a newcomer runs
    the project."""
    port = free_port()
    dev = start(
        "dagster-dev",
        [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        env,
        log_dir,
        stop_signal=signal.SIGINT,
    )
    try:
        server = Webserver(f"http://127.0.0.1:{port}")
        wait_until_serving(server, dev)
        yield server
    finally:
        dev.stop()


@contextlib.contextmanager
def dagster_stack(
    env: Mapping[str, str], log_dir: Path, with_webserver: bool = True
) -> Iterator[Webserver | None]:
    """`dagster-webserver` and `dagster-daemon` on workspace.yaml, as a deployment runs them
    (the daemon dequeues the runs the webserver launches; `dagster dev` starts the same pair)."""
    daemon = start(
        "daemon", [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, log_dir
    )
    processes = [daemon]
    try:
        if not with_webserver:
            yield None
            return
        port = free_port()
        webserver = start(
            "webserver",
            [
                str(BIN / "dagster-webserver"),
                "-w",
                "workspace.yaml",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            env,
            log_dir,
        )
        processes.append(webserver)
        server = Webserver(f"http://127.0.0.1:{port}")

        def ready() -> bool:
            if not webserver.alive():
                raise AssertionError(f"dagster-webserver exited:\n{webserver.log()}")
            return (
                requests.get(f"{server.url}/server_info", timeout=5).ok and server.location_loaded()
            )

        try:
            wait_for(ready, 300, "dagster-webserver to serve the code location", interval=1)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{webserver.log()}") from None
        yield server
    finally:
        for process in reversed(processes):
            process.stop()

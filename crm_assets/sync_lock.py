"""One CRM sync at a time per dlt pipeline folder and per DuckDB file.

Two dlt runs sharing a pipelines folder overwrite each other's state and load packages, and a
DuckDB file takes one writer process at a time. The asset also asks for the Dagster pool
`crm_warehouse`, but a pool limits anything only on an instance configured for it (and only for
runs of that instance); a plain `dagster asset materialize` next to a scheduled run would still
overlap. So the run also holds OS file locks (`flock`) for the whole dlt run: a second run waits
for the first to finish, up to CRM_SYNC_LOCK_TIMEOUT seconds (default one hour), then fails with
one line. The kernel drops a lock when its process dies, even by SIGKILL: a crashed run never
leaves a stale lock behind.

A sync may leave work to finish in the background once its rows are committed (DuckDB's last
checkpoint, see loads.py): the locks stay held until that work ends, so that no other process
opens a file this one still has open. In this process, the checks that follow a sync in the
same run read beside that work (DuckDB reads while it checkpoints), and another sync waits for
it first, without polling.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from dagster import Failure
from dlt.common.pipeline import get_dlt_pipelines_dir

from crm_assets.errors import CRMConfigError, CRMError, Log
from crm_assets.resources import PIPELINE_NAME, CRMWarehouse

LOCK_TIMEOUT_ENV = "CRM_SYNC_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 3600.0
_POLL_S = 0.2


class SyncLockTimeout(CRMError, Failure):
    """Another sync kept the warehouse for longer than this run was willing to wait. A Dagster
    `Failure`, so the step fails with this one line rather than a wrapped stack trace."""

    def __init__(self, message: str) -> None:
        CRMError.__init__(self, message)
        Failure.__init__(self, description=message, allow_retries=False)


def lock_timeout(warehouse: CRMWarehouse) -> float:
    """The warehouse resource's `sync_lock_timeout`, else CRM_SYNC_LOCK_TIMEOUT, else an hour."""
    raw: object = warehouse.sync_lock_timeout
    if raw is None:
        raw = os.environ.get(LOCK_TIMEOUT_ENV)
    if raw is None or raw == "":
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        value = float(raw)  # type: ignore[arg-type]
    except ValueError:
        raise CRMConfigError(f"{LOCK_TIMEOUT_ENV} must be a number, got {raw!r}") from None
    if value < 0:
        raise CRMConfigError(f"{LOCK_TIMEOUT_ENV} must be zero or more, got {raw!r}")
    return value


def sync_lock_paths(warehouse: CRMWarehouse) -> list[Path]:
    """The lock files of this warehouse, always in the same order (no two runs can deadlock)."""
    pipelines_dir = (
        warehouse.pipelines_dir or os.environ.get("CRM_PIPELINES_DIR") or get_dlt_pipelines_dir()
    )
    paths = [Path(pipelines_dir).expanduser().resolve() / f"{PIPELINE_NAME}.lock"]
    if warehouse.destination_name() == "duckdb":
        database = warehouse.database_path()
        paths.append(database.with_name(database.name + ".sync.lock"))
    return paths


def _acquire(handle: IO[Any], path: Path, log: Log, deadline: float, timeout: float) -> None:
    waited = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if waited:
                log.info(f"crm sync: got {path} after the other sync finished")
            return
        except BlockingIOError:
            pass
        if not waited:
            waited = True
            log.info(f"crm sync: another sync holds {path}; waiting up to {timeout:.0f} s")
        if time.monotonic() >= deadline:
            raise SyncLockTimeout(
                f"crm sync: another sync still holds {path} after {timeout:.0f} s; "
                f"raise {LOCK_TIMEOUT_ENV} or wait for it to finish"
            )
        time.sleep(_POLL_S)


@dataclass
class _Hold:
    """An OS lock this process holds, and how many in it use it (the holder, and the threads
    it left working in the background)."""

    handle: IO[Any]
    users: int = 1
    background: list[threading.Thread] = field(default_factory=list)


_guard = threading.Lock()
_holds: dict[Path, _Hold] = {}


def _take(
    path: Path, log: Log, deadline: float, timeout: float, beside: bool
) -> list[threading.Thread]:
    """Take the lock of `path`; returns the background work a reader (`beside`) goes on
    beside rather than waiting for it."""
    with _guard:
        hold = _holds.get(path)
        waiting = list(hold.background) if hold else []
        if beside and hold is not None and waiting and hold.users == len(waiting):
            hold.users += 1  # only work a sync left holds it, in this process: read beside it
            return waiting
    for thread in waiting:  # this process's own work, left by a sync that has ended
        thread.join(max(0.0, deadline - time.monotonic()))  # still at it: the lock times out
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a")
    try:
        _acquire(handle, path, log, deadline, timeout)
    except BaseException:
        handle.close()
        raise
    with _guard:
        _holds[path] = _Hold(handle)
    return []


def _release(path: Path) -> None:
    with _guard:
        hold = _holds[path]
        hold.users -= 1
        hold.background = [t for t in hold.background if t is not threading.current_thread()]
        if hold.users:
            return
        del _holds[path]
    hold.handle.close()  # closing the file drops the lock


@dataclass(frozen=True)
class SyncHold:
    """The locks of one warehouse, held by this process."""

    paths: tuple[Path, ...]

    def in_background(self, work: Callable[[], None], name: str) -> threading.Thread:
        """Run `work` on a thread that keeps these locks until it returns, however long the
        holder's own block lasts. Not a daemon: the process waits for it before exiting."""

        def run() -> None:
            try:
                work()
            finally:
                for path in reversed(self.paths):
                    _release(path)

        thread = threading.Thread(target=run, name=name)
        with _guard:
            for path in self.paths:
                _holds[path].users += 1
                _holds[path].background.append(thread)
        thread.start()
        return thread


@contextmanager
def exclusive_sync(
    warehouse: CRMWarehouse, log: Log, timeout: float | None = None, reading: bool = False
) -> Iterator[SyncHold]:
    """Hold every lock of `warehouse` for the body. A body that only reads (`reading`) runs
    beside the work a sync of this process left in the background, and ends once that work
    has ended too; any other waits for it first."""
    timeout = lock_timeout(warehouse) if timeout is None else timeout
    deadline = time.monotonic() + timeout
    paths = tuple(sync_lock_paths(warehouse))
    taken: list[Path] = []
    beside: list[threading.Thread] = []
    try:
        for path in paths:
            beside += _take(path, log, deadline, timeout, reading)
            taken.append(path)
        yield SyncHold(paths)
    finally:
        for path in reversed(taken):
            _release(path)
        for thread in beside:
            thread.join()

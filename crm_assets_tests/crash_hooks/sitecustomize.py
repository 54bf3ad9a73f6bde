"""Hold a sync inside one of dlt's phases until the crash test kills it.

Python imports `sitecustomize` at start-up from the first folder of PYTHONPATH that has one, so
with this folder there every process of a CLI run (the `dagster` command and the step process it
spawns) loads it. It does nothing unless CRM_TEST_HOLD_IN names a phase:

  normalize  every file of the extracted package normalized, before the package is committed
             (the extracted package still in `normalize/extracted`, the new one in `load/new`)
  load       the first load job moved to `started_jobs`, before it runs (the other jobs of the
             package run and complete meanwhile; the package stays in `load/normalized`)

On getting there the process writes CRM_TEST_HOLD_FILE and then waits to be killed. A kill that
waits for that file lands in the phase however slow the machine, where one that polls dlt's
folders for a sub-second window can miss it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

PHASE = os.environ.get("CRM_TEST_HOLD_IN")
HOLD_FILE = os.environ.get("CRM_TEST_HOLD_FILE")


def _hold() -> None:
    Path(HOLD_FILE or "/dev/null").write_text(f"{PHASE} {os.getpid()}\n")
    while True:  # until SIGKILL
        time.sleep(60)


def _hold_in_normalize() -> None:
    from dlt.normalize.normalize import Normalize

    spool_files = Normalize.spool_files

    def holding_spool_files(self: Any, load_id: str, schema: Any, map_f: Any, files: Any) -> None:
        def map_then_hold(*args: Any, **kwargs: Any) -> Any:
            result = map_f(*args, **kwargs)
            _hold()
            return result

        return spool_files(self, load_id, schema, map_then_hold, files)

    Normalize.spool_files = holding_spool_files


def _hold_in_load() -> None:
    from dlt.load.load import Load

    run_job = Load.w_run_job  # a static method: submit_job looks it up on the class each time
    first = threading.Lock()

    def holding_run_job(*args: Any, **kwargs: Any) -> Any:
        if first.acquire(blocking=False):
            _hold()
        return run_job(*args, **kwargs)

    Load.w_run_job = staticmethod(holding_run_job)


if PHASE == "normalize":
    _hold_in_normalize()
elif PHASE == "load":
    _hold_in_load()

"""Smoke test of the benchmark harness: one tiny local scenario end to end, no timing asserted.

The harness runs the simulator CLI, plain dlt, the real `dagster` CLI and the floor fetcher as
subprocesses; this checks it produces its table with the three runs and exact counts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from crm_assets_tests.conftest import REPO_ROOT, clean_env


def test_quick_local_benchmark_reports_three_correct_runs(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "run.py"),
            "--scenario",
            "local",
            "--quick",
            "--results-dir",
            str(results),
        ],
        env=clean_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((results / "latest.json").read_text())
    (local,) = report["scenarios"]
    assert set(local["runs"]) == {"a", "b", "c"}
    for key in ("a", "b"):
        run = local["runs"][key]
        assert run["ok"], run["error"]
        for table, n in local["counts"].items():
            assert run["detail"]["counts"][table] == {"rows": n, "distinct_ids": n, "expected": n}
    assert local["runs"]["c"]["records"] == sum(local["counts"].values())
    assert {"b/a", "b/c"} <= set(local["ratios"])
    table = (results / "latest.md").read_text()
    for label in ("(a) plain dlt", "(b) this project", "(c) floor"):
        assert label in table
    assert report["machine"]["nproc"] >= 1

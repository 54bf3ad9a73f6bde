"""Smoke test of the benchmark harness: the tiny local scenario end to end, no timing asserted.

The harness runs the simulator CLI, plain dlt, the real `dagster` CLI and the floor fetcher as
subprocesses; this checks it produces its table with the three runs and exact counts, both on the
simulator's declared data (integer ids) and on the `crm` profile (18-character string ids,
undeclared fields), so that the harness's own checks are known to work whatever the ids are;
and the fixed scenario, whose Dagster-alone run must mirror the project's steps and checks.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from crm_assets import defs
from crm_assets.api import SEED_API
from crm_assets_tests.conftest import REPO_ROOT, clean_env

BENCH_DIR = REPO_ROOT / "benchmarks"
# The data unlike the simulator's default: the harness path is the same for every profile.
SMOKE_PROFILES = ("crm",)


def _load(name: str) -> ModuleType:
    """A benchmark script as a module: the scripts are run by path, not installed."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCH_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses look their module up while the class is built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_baseline_is_the_seed_config_with_only_run_time_values() -> None:
    """(a) must send what the seed's config sends: no declared schema, no incremental filter."""
    config = _load("baseline").baseline_config("http://crm.test", "key", "access")
    assert config["resources"] == SEED_API["resources"]
    assert config["resource_defaults"] == SEED_API["resource_defaults"]
    assert config["client"] == {
        **SEED_API["client"],
        "base_url": "http://crm.test",
        "auth": {**SEED_API["client"]["auth"], "api_key": "key"},
        "headers": {"X-Access-Key": "access"},
    }
    for resource in config["resources"]:
        assert "params" not in resource["endpoint"]
        assert "incremental" not in resource["endpoint"]


def test_profile_option_accepts_one_a_list_or_all() -> None:
    parse = _load("run").parse_profiles
    assert parse("all") == ["declared", "crm", "uuid"]
    assert parse("uuid") == ["uuid"]
    assert parse("crm,declared,crm") == ["crm", "declared"]
    with pytest.raises(argparse.ArgumentTypeError):
        parse("declared,salesforce")


def _quick_run(scenario: str, results: Path, *extra: str) -> str:
    """`benchmarks/run.py --quick` on one scenario, as a user runs it; its printed lines."""
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / "run.py"), "--scenario", scenario, "--quick"]
        + ["--profile", ",".join(SMOKE_PROFILES), "--results-dir", str(results), *extra],
        env=clean_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=360,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_quick_local_benchmark_reports_correct_runs_for_each_profile(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _quick_run("local", results)
    report = json.loads((results / "latest.json").read_text())
    assert report["profiles"] == list(SMOKE_PROFILES)
    rows = report["scenarios"]
    assert [(row["scenario"], row["profile"]) for row in rows] == [
        ("local", profile) for profile in SMOKE_PROFILES
    ]
    table = (results / "latest.md").read_text()
    for row in rows:
        assert set(row["runs"]) == {"a", "b", "c"}
        assert len(row["load_averages"]) == 3
        for key in ("a", "b"):
            run = row["runs"][key]
            assert run["ok"], run["error"]
            for name, n in row["counts"].items():
                counts = run["detail"]["counts"][name]
                assert (counts["rows"], counts["distinct_ids"], counts["null_ids"]) == (n, n, 0)
                assert counts["expected"] == n
                if row["profile"] == "crm":
                    # The simulator did serve string ids, and they stayed strings.
                    assert counts["id_type"] == "VARCHAR", (key, name, counts)
        assert row["runs"]["c"]["ok"]
        assert row["runs"]["c"]["records"] == sum(row["counts"].values())
        assert {"b/a", "b/c"} <= set(row["ratios"])
        assert row["targets"]
        for label in ("(a) plain dlt", "(b) this project", "(c) floor"):
            assert f"| local | {row['data']} | {label}" in table
        load = " / ".join(f"{x:.2f}" for x in row["load_averages"])
        assert f"| local | {row['data']} | {load} |" in table
    assert [row["data"] for row in rows] == ["string ids (crm)"]
    assert report["machine"]["nproc"] >= 1


def test_fixed_benchmark_runs_dagster_alone_in_the_projects_shape(tmp_path: Path) -> None:
    """(d) runs the project's steps doing nothing: the same assets and checks, as many steps,
    through the same CLI, so that the fixed cost it reports is Dagster's part of a run."""
    results = tmp_path / "results"
    printed = _quick_run("fixed", results, "--keep")
    ((row,),) = [json.loads((results / "latest.json").read_text())["scenarios"]]
    assert set(row["runs"]) == {"b", "d"}
    alone, project = row["runs"]["d"], row["runs"]["b"]
    assert alone["ok"], alone["error"]
    assert project["ok"], project["error"]
    checks = sum(len(c.check_keys) for c in defs.asset_checks)
    steps = len(defs.assets) + len(defs.asset_checks)
    assert (alone["detail"]["assets"], alone["detail"]["checks"]) == (5, checks)
    # Every step of (d) ran, as many as (b) ran.
    assert len(alone["detail"]["steps_s"]) == len(project["detail"]["steps_s"]) == steps
    assert "d/b" in row["ratios"]

    # Its run is in its own instance: one successful run with the checks all reported.
    work = next(
        Path(line.split(": ", 1)[1])
        for line in printed.splitlines()
        if line.startswith("work folder kept: ")
    )
    try:
        home = next(work.glob("fixed*/dagster_home_alone"))
        with DagsterInstance.from_config(str(home)) as instance:
            (run,) = instance.get_runs()
            assert run.status == DagsterRunStatus.SUCCESS
            evaluations = instance.get_records_for_run(
                run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
            ).records
            assert len(evaluations) == checks
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = (results / "latest.md").read_text()
    assert "| fixed | string ids (crm) | (d) Dagster alone" in table


def test_remote_rows_report_the_least_a_cli_run_can_take() -> None:
    """Against a rate limit the fetch cannot beat pages / rate, and Dagster's own run comes on
    top of it: every remote row runs Dagster alone (d) beside the project, and the report gives
    ((d) + (c)) / (c), the least any run through the CLI takes on that machine."""
    run = _load("run")
    rows = run.SCENARIOS["remote"]
    assert rows and all("d" in row.contenders for row in rows)
    scenario = rows[0]
    floor = scenario.pages / scenario.rate_limit
    results = {
        "b": run.Measured(
            "b", True, 27.5, scenario.records, 400, 420, {"steps_s": {run.SYNC_STEP: 21.0}}
        ),
        "d": run.Measured("d", True, 5.3, 0, 110, 135, {"steps_s": {"assets_0": 0.1}}),
        "c": run.Measured("c", True, floor, scenario.records, 0, 0, {"computed": "pages / rate"}),
    }
    row = run.scenario_report(scenario, (0.5, 0.5, 0.5), results)
    bound = row["ratios"]["(d+c)/c"]
    assert bound == round((5.3 + floor) / floor, 3)
    # The project's own ratio is judged as before; the bound only says what was possible.
    assert row["ratios"]["b/c"] == round(27.5 / floor, 3)
    assert row["targets"]["(b) within 1.15x of rate floor"] is (27.5 / floor <= 1.15)

    table = run.to_markdown(
        {
            "date": "now",
            "quick": False,
            "command": "python benchmarks/run.py --scenario remote",
            "machine": run.machine(),
            "project_env": {},
            "scenarios": [row],
        }
    )
    assert "| ((d)+(c))/(c) |" in table
    ratios_row = f"| {row['scenario']} | {row['data']} | 0.50 / 0.50 / 0.50 |"
    (line,) = [x for x in table.splitlines() if x.startswith(ratios_row)]
    assert f"| {bound:.2f} |" in line

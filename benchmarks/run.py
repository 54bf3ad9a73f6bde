"""Side-by-side sync benchmark: plain dlt (a), this project through Dagster (b), the floor (c).

    .venv/bin/python benchmarks/run.py [--scenario fixed|local|remote|scale|all]
        [--profile declared|crm|uuid|all|declared,crm,...] [--quick]

Scenarios: `fixed` (the project on 5 records per resource: the cost of a run with nothing to
sync; beside it Dagster alone), `local` (402,000 records), `remote` (201,000 records behind 50 ms
latency and a limit of 100 requests/s, with a token bucket that admits 0.1 s of requests at once,
with one that admits a whole second's, and with the latter behind an API that reports no total)
and `scale` (0.5M, 1M and 2M records: memory that stays flat, and the floor at 2M).

Each scenario runs once per data profile (the simulator's `--profile`): `declared` serves records
exactly as the declared schema has them (integer ids), `crm` serves them as a real CRM would
(18-character string ids, undeclared camelCase fields, other timestamp forms) and `uuid` with UUID
ids. A speed-up measured only on the data the project declares says little about a real CRM, so
the rows of every profile stand side by side, and the targets hold for each of them.

Each scenario row starts the CRM simulator as its own process (its CLI), so that it shares no GIL
with what is measured, then runs each contender as a subprocess against it:

(a) `benchmarks/baseline.py`: the seed's `SEED_API` through `rest_api_source` and
    `dlt.pipeline(destination=duckdb)` with dlt's default settings; no declared schema, no
    incremental filter, no parameter the seed does not name.
(b) `dagster asset materialize -m crm_assets --select '*'`: the real CLI, with a fresh
    DAGSTER_HOME, DuckDB file and dlt pipelines folder.
(c) `benchmarks/floor.py`: every page fetched one after another by one `requests.Session` and
    decoded with `json`, nothing stored. In the remote scenario the floor is computed instead:
    pages / the API's allowed request rate.
(d) in the fixed and remote scenarios, `benchmarks/dagster_alone.py` through the same CLI: steps
    of the project's shape (the same assets per step, the same checks per check step) that do
    nothing. It is the part of every run that belongs to Dagster, which no sync can shorten.

After (a) and (b) the DuckDB file is checked: every table has exactly the served record count, no
null and no duplicate id. The check compares ids only with each other, so it holds for integer,
string and UUID ids alike. A run that fails or loads wrong counts is reported as failed, whatever
its time. The load average at the start of each scenario row is reported next to it: other work
on the machine slows every contender, and a table is judged with that in mind. Each contender
starts once the 1-minute load average is under 1.0 (or after two minutes of waiting, printed),
and plain dlt runs last in its row: it leaves the machine busy and its page cache empty, and
the contender after it would pay for that.

Peak RSS is measured two ways for each subprocess tree:
- "peak RSS": `ru_maxrss` from `os.wait4` on the subprocess, which Linux reports as the largest
  resident set of any single process in the tree (the subprocess or a descendant it waited for).
- "tree RSS": the sum of the resident sets of the subprocess and all its descendants, sampled
  from /proc every 50 ms; with Dagster's step subprocess next to the CLI process this is the
  figure that the machine has to hold.

For (b), the table "where the time goes" takes the wall time apart: the CLI's start-up and
shut-down, the sync step and, from the sync's own timing line, dlt's extract (of which waiting
for pages and typing records), normalize and load, the number of loads (chunks), and the checks.

In the remote scenario the report also gives (b)'s sync step alone against the floor (the run
less Dagster's start-up, shut-down and check steps), and ((d) + (c)) / (c): Dagster alone plus
the floor, against the floor, measured in the same row. No run through the CLI can take less on
that machine, so where that bound is above a target the target cannot be met there, whatever
the sync does.

Results go to `benchmarks/results/latest.json` and `latest.md` (or `--results-dir`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import duckdb

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
PYTHON = sys.executable
DAGSTER = str(Path(sys.executable).with_name("dagster"))
API_KEY = "bench-api-key"
ACCESS_KEY = "bench-access-key"
PAGE_SIZE = 100  # SEED_API's offset paginator limit; used only for the computed remote floor
RUN_TIMEOUT_S = 1800  # a bound on every measured subprocess
SETTLE_LOAD = 1.0  # each contender starts once the 1-minute load average is under this ...
SETTLE_LONGEST_S = 120.0  # ... or after this long
READY_TIMEOUT_S = 600  # generating 2,000,000 records takes a while

# The simulator's data profiles, as the report names them: what kind of ids the rows were run on.
DATA_LABELS: dict[str, str] = {
    "declared": "integer ids (declared)",
    "crm": "string ids (crm)",
    "uuid": "uuid ids (uuid)",
}
PROFILES: tuple[str, ...] = tuple(DATA_LABELS)
DEFAULT_PROFILES = "all"


@dataclass(frozen=True)
class Scenario:
    name: str
    counts: dict[str, int]
    latency_ms: float = 0.0
    rate_limit: float | None = None
    # In this order: plain dlt (a) takes 15-23 GB of the machine's 24 GB and empties the page
    # cache, so whatever ran right after it started cold (the project on string ids took
    # 17.2 s right after it, 14.4 and 14.2 s in two repeats of the same row): it runs last.
    contenders: tuple[str, ...] = ("b", "c", "a")
    # remote: the floor is pages / allowed rate, computed rather than fetched
    computed_floor: bool = False
    profile: str = "declared"
    rate_burst: float = 0.1  # seconds' worth of requests the simulator's token bucket admits
    omit_total: bool = False  # the API reports no `total`: the read cannot know where it ends
    variant: str = ""  # what sets this row apart from the scenario's others ("1 s burst", "1M")

    @property
    def label(self) -> str:
        return f"{self.name} ({self.variant})" if self.variant else self.name

    @property
    def key(self) -> str:
        """The row's name in logs and work folders: scenario, variant and profile."""
        variant = f"-{self.variant.replace(' ', '').replace(',', '-')}" if self.variant else ""
        return f"{self.name}{variant}/{self.profile}"

    @property
    def records(self) -> int:
        return sum(self.counts.values())

    @property
    def pages(self) -> int:
        # cases come on one page; every other resource is paged by PAGE_SIZE
        return sum(
            1 if name == "cases" else max(1, math.ceil(n / PAGE_SIZE))
            for name, n in self.counts.items()
        )


def _counts(each: int, cases: int) -> dict[str, int]:
    return {
        "customers": each,
        "contacts": each,
        "cases": cases,
        "leads": each,
        "opportunities": each,
    }


def _remote(each: int, cases: int) -> tuple[Scenario, ...]:
    """50 ms per request, 100 requests/s: a bucket that admits 0.1 s of requests at once, and
    one that admits a whole second's, as many API gateways do; and the latter behind an API
    that reports no total, as many do not (its floor is the same pages / rate: the empty page
    that ends each read is not counted in it)."""
    rows = [
        Scenario(
            "remote",
            _counts(each, cases),
            latency_ms=50,
            rate_limit=100,
            computed_floor=True,
            rate_burst=burst,
            variant=f"{burst:g} s burst",
            # Dagster alone beside the project: with the fetch bound by the rate, Dagster's own
            # cost of a run is most of what the project takes beyond the floor.
            contenders=("b", "d", "c", "a"),
        )
        for burst in (0.1, 1.0)
    ]
    no_total = replace(rows[-1], omit_total=True, variant=f"{rows[-1].variant}, no total")
    return (*rows, no_total)


# Each scenario is one or more rows, each run once per data profile.
SCENARIOS: dict[str, tuple[Scenario, ...]] = {
    # The project on 5 records per resource: its fixed costs (start-up, checks, shut-down),
    # which the other rows' per-record costs are reckoned without.
    # Beside it, Dagster alone: the same CLI running steps of the project's shape that do
    # nothing, so that the part of a run no sync can shorten is measured rather than guessed.
    "fixed": (Scenario("fixed", _counts(5, 5), contenders=("d", "b")),),
    "local": (Scenario("local", _counts(100_000, 2_000)),),
    "remote": _remote(50_000, 1_000),
    # Memory that stays flat as the record count doubles, and the floor at the largest size.
    "scale": (
        Scenario("scale", _counts(125_000, 2_000), contenders=("b",), variant="0.5M"),
        Scenario("scale", _counts(250_000, 2_000), contenders=("b",), variant="1M"),
        Scenario("scale", _counts(500_000, 2_000), contenders=("b", "c"), variant="2M"),
    ),
}
QUICK: dict[str, tuple[Scenario, ...]] = {
    "fixed": SCENARIOS["fixed"],
    "local": (Scenario("local", _counts(2_000, 150)),),
    "remote": _remote(1_000, 50),
    "scale": (Scenario("scale", _counts(10_000, 150), contenders=("b", "c")),),
}
LABELS = {
    "a": "(a) plain dlt, defaults",
    "b": "(b) this project (dagster CLI)",
    "c": "(c) floor",
    "d": "(d) Dagster alone, no-op steps of (b)'s shape",
}


@dataclass
class Measured:
    """One measured run of one contender."""

    contender: str
    ok: bool
    wall_s: float
    records: int
    peak_rss_mb: float
    tree_rss_mb: float
    detail: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def records_per_s(self) -> float:
        return self.records / self.wall_s if self.wall_s else 0.0


# -- processes -------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the fields start after the last ')'
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _tree_rss_bytes(root: int) -> int:
    children = _children_map()
    page = os.sysconf("SC_PAGE_SIZE")
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
        stack.extend(children.get(pid, []))
    return total


def measure(cmd: list[str], env: dict[str, str], log_path: Path) -> tuple[int, float, float, float]:
    """Run `cmd`; return (exit code, wall seconds, peak RSS MB, peak tree RSS MB)."""
    stop = threading.Event()
    peak_tree = [0]
    with open(log_path, "wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)

        def sample() -> None:
            while not stop.wait(0.05):
                peak_tree[0] = max(peak_tree[0], _tree_rss_bytes(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timer = threading.Timer(RUN_TIMEOUT_S, proc.kill)
        timer.start()
        try:
            # wait4 rather than proc.wait: it returns the rusage of this child's tree
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            stop.set()
            sampler.join()
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux
    return proc.returncode, wall, usage.ru_maxrss / 1024, peak_tree[0] / 2**20


class Simulator:
    """The CRM simulator CLI in its own process, for one scenario."""

    def __init__(self, scenario: Scenario, workdir: Path) -> None:
        self.scenario = scenario
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def __enter__(self) -> Simulator:
        ready = self.workdir / "simulator.url"
        cmd = [PYTHON, "-m", "crm_simulator", "--port", "0", "--ready-file", str(ready)]
        cmd += ["--profile", self.scenario.profile]
        for name, n in self.scenario.counts.items():
            cmd += ["--count", f"{name}={n}"]
        if self.scenario.latency_ms:
            cmd += ["--latency-ms", str(self.scenario.latency_ms)]
        if self.scenario.rate_limit:
            cmd += ["--rate-limit", str(self.scenario.rate_limit)]
            cmd += ["--rate-burst", str(self.scenario.rate_burst)]
        if self.scenario.omit_total:
            cmd += ["--fault", "omit_total=true"]
        env = {**os.environ, "CRM_API_KEY": API_KEY, "CRM_ACCESS_KEY": ACCESS_KEY}
        log = open(self.workdir / "simulator.log", "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    "simulator exited: " + (self.workdir / "simulator.log").read_text()[-2000:]
                )
            if time.monotonic() > deadline:
                raise RuntimeError("simulator did not start in time")
            time.sleep(0.1)
        self.base_url = ready.read_text().strip()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


# -- checks ----------------------------------------------------------------------------------


def verify_counts(duckdb_path: Path, expected: dict[str, int]) -> tuple[bool, dict[str, Any]]:
    """Exact row count, no null and no duplicate id in every table; a fast wrong run must not
    count. Ids are only counted and compared with each other, never read as numbers, so the same
    check holds whether a profile's ids are integers, 18-character strings or UUIDs."""
    found: dict[str, Any] = {}
    ok = True
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        for table, n in expected.items():
            try:
                rows, ids, null_ids, id_type = con.execute(
                    "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE id IS NULL), "
                    f'any_value(typeof(id)) FROM crm."{table}"'
                ).fetchone()
            except duckdb.Error as exc:
                found[table] = f"missing: {str(exc).splitlines()[0]}"
                ok = False
                continue
            found[table] = {
                "rows": rows,
                "distinct_ids": ids,
                "null_ids": null_ids,
                "expected": n,
                # reported, not checked: which type each contender gave the profile's ids
                "id_type": id_type,
            }
            ok = ok and rows == n and ids == n and null_ids == 0
    return ok, found


def _base_env(base_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRM_", "DAGSTER_"))}
    env.update(
        CRM_BASE_URL=base_url,
        CRM_API_KEY=API_KEY,
        CRM_ACCESS_KEY=ACCESS_KEY,
        PYTHONPATH=str(REPO_ROOT),
    )
    return env


def _last_json(log: Path) -> dict[str, Any]:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return {}


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


# The multiprocess executor's own figure ("23.71s", "1m33s"): step subprocesses plus the steps.
EXECUTOR_RE = re.compile(r"parent process exiting after (?:([0-9]+)m)?([0-9.]+)s")
# The sync's own account of its time (assets.timing_line).
TIMING_RE = re.compile(
    r"sync timing: (?P<sync>[0-9.]+) s in (?P<loads>[0-9]+) load\(s\); extract "
    r"(?P<extract>[0-9.]+) s \(waiting for pages (?P<waiting>[0-9.]+) s, typing records "
    r"(?P<typing>[0-9.]+) s\), normalize (?P<normalize>[0-9.]+) s, load (?P<load>[0-9.]+) s"
)


def _seconds(minutes: str | None, seconds: str) -> float:
    return round(60 * float(minutes or 0) + float(seconds), 2)


def _step_seconds(dagster_home: Path) -> dict[str, float]:
    """Each step's own time, in seconds, from the events of the one run in `dagster_home`.
    Not from the CLI's printed lines: Dagster mirrors a run's output to the console through
    its log capture, which can drop the last lines (a step's end) as the process exits."""
    from dagster import DagsterEventType, DagsterInstance  # only the harness's reading needs it

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
        if len(runs) != 1:
            return {}
        records = instance.get_records_for_run(
            runs[0].run_id, of_type=DagsterEventType.STEP_SUCCESS
        ).records
        return {
            event.step_key: round(event.event_specific_data.duration_ms / 1000, 3)
            for event in (r.event_log_entry.dagster_event for r in records)
            if event is not None and event.step_key
        }


def run_baseline(scenario: Scenario, base_url: str, work: Path) -> Measured:
    db = work / "baseline.duckdb"
    log = work / "baseline.log"
    cmd = [PYTHON, str(BENCH_DIR / "baseline.py"), str(db), str(work / "baseline_pipelines")]
    code, wall, peak, tree = measure(cmd, _base_env(base_url), log)
    ok, counts = (False, {}) if code else verify_counts(db, scenario.counts)
    return Measured(
        "a",
        ok,
        wall,
        scenario.records,
        peak,
        tree,
        {"steps": _last_json(log).get("steps", {}), "counts": counts},
        "" if ok else (f"exit {code}: {_tail(log)}" if code else f"wrong counts: {counts}"),
    )


def run_project(scenario: Scenario, base_url: str, work: Path) -> Measured:
    home = work / "dagster_home"
    home.mkdir()
    db = work / "project.duckdb"
    log = work / "project.log"
    env = _base_env(base_url)
    env.update(
        DAGSTER_HOME=str(home),
        CRM_DUCKDB_PATH=str(db),
        CRM_PIPELINES_DIR=str(work / "project_pipelines"),
    )
    env.update(PROJECT_ENV)
    cmd = [DAGSTER, "asset", "materialize", "-m", "crm_assets", "--select", "*"]
    code, wall, peak, tree = measure(cmd, env, log)
    ok, counts = (False, {}) if code else verify_counts(db, scenario.counts)
    text = log.read_text(errors="replace")
    detail: dict[str, Any] = {
        "counts": counts,
        "http_429_retries": text.count("HTTP 429"),
        "retries": len(re.findall(r"; retry \d+/\d+ in ", text)),
    }
    detail["steps_s"] = _step_seconds(home)
    if m := TIMING_RE.search(text):
        detail["timing_s"] = {k: float(v) if "." in v else int(v) for k, v in m.groupdict().items()}
    if m := EXECUTOR_RE.search(text):
        detail["executor_s"] = _seconds(m.group(1), m.group(2))
    return Measured(
        "b",
        ok,
        wall,
        scenario.records,
        peak,
        tree,
        detail,
        "" if ok else (f"exit {code}: {_tail(log)}" if code else f"wrong counts: {counts}"),
    )


# The project's steps as `benchmarks/dagster_alone.py` mirrors them: the assets each step
# materializes and the checks each check step evaluates.
SHAPE_CODE = """
import json, sys
from crm_assets import defs
json.dump({
    "assets": [sorted(k.to_user_string() for k in a.keys) for a in defs.assets],
    "checks": [
        sorted([k.asset_key.to_user_string(), k.name] for k in c.check_keys)
        for c in defs.asset_checks
    ],
}, open(sys.argv[1], "w"))
"""


def run_dagster_alone(scenario: Scenario, base_url: str, work: Path) -> Measured:
    shape = work / "shape.json"
    env = _base_env(base_url)
    subprocess.run([PYTHON, "-c", SHAPE_CODE, str(shape)], env=env, check=True, cwd=REPO_ROOT)
    home = work / "dagster_home_alone"
    home.mkdir()
    env.update(DAGSTER_HOME=str(home), BENCH_SHAPE=str(shape))
    log = work / "dagster_alone.log"
    cmd = [DAGSTER, "asset", "materialize", "-f", str(BENCH_DIR / "dagster_alone.py")]
    code, wall, peak, tree = measure([*cmd, "--select", "*"], env, log)
    shape_of = json.loads(shape.read_text())
    detail: dict[str, Any] = {
        "steps": len(shape_of["assets"]) + len(shape_of["checks"]),
        "assets": sum(len(a) for a in shape_of["assets"]),
        "checks": sum(len(c) for c in shape_of["checks"]),
        "steps_s": _step_seconds(home),
    }
    return Measured(
        "d",
        code == 0,
        wall,
        0,
        peak,
        tree,
        detail,
        "" if code == 0 else f"exit {code}: {_tail(log)}",
    )


def run_floor(scenario: Scenario, base_url: str, work: Path) -> Measured:
    if scenario.computed_floor:
        assert scenario.rate_limit
        seconds = scenario.pages / scenario.rate_limit
        return Measured(
            "c",
            True,
            seconds,
            scenario.records,
            0.0,
            0.0,
            {"computed": f"{scenario.pages} pages / {scenario.rate_limit:g} requests/s"},
        )
    log = work / "floor.log"
    code, wall, peak, tree = measure(
        [PYTHON, str(BENCH_DIR / "floor.py")], _base_env(base_url), log
    )
    out = _last_json(log)
    ok = code == 0 and out.get("records") == scenario.records
    return Measured(
        "c",
        ok,
        wall,
        scenario.records,
        peak,
        tree,
        {"pages": out.get("pages"), "fetch_s": out.get("seconds")},
        "" if ok else f"exit {code}: {_tail(log)}",
    )


PROJECT_ENV: dict[str, str] = {}  # --project-env: settings under test, reported with the results

RUNNERS = {"a": run_baseline, "b": run_project, "c": run_floor, "d": run_dagster_alone}


def load_averages() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    with open("/proc/loadavg") as f:
        one, five, fifteen = (float(x) for x in f.read().split()[:3])
    return one, five, fifteen


def settle(tag: str, below: float = SETTLE_LOAD, longest_s: float = SETTLE_LONGEST_S) -> None:
    """Wait (up to `longest_s`) for the 1-minute load average to fall under `below`: plain
    dlt's run leaves the machine busy (and 10-22 GB of memory to give back), and the contender
    after it would pay for that."""
    started = time.monotonic()
    while load_averages()[0] >= below and time.monotonic() - started < longest_s:
        time.sleep(5)
    waited = time.monotonic() - started
    if waited >= 1:
        print(f"{tag} waited {waited:.0f} s for load average {load_averages()[0]:.2f}", flush=True)


def run_scenario(scenario: Scenario, workroot: Path) -> dict[str, Any]:
    work = workroot / scenario.key.replace("/", "-")
    work.mkdir(parents=True)
    # Other work on the machine slows every contender; taken before the simulator starts, so
    # that it shows what else was running rather than this row's own data generation.
    load = load_averages()
    tag = f"[{scenario.key}]"
    print(
        f"{tag} load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; starting simulator "
        f"({scenario.records:,} records, {DATA_LABELS[scenario.profile]})",
        flush=True,
    )
    results: dict[str, Measured] = {}
    with Simulator(scenario, work) as sim:
        for contender in scenario.contenders:
            settle(tag)
            print(f"{tag} running {LABELS[contender]}", flush=True)
            m = RUNNERS[contender](scenario, sim.base_url, work)
            results[contender] = m
            state = "ok" if m.ok else f"FAILED: {m.error}"
            print(
                f"{tag} {LABELS[contender]}: {m.wall_s:.1f} s, "
                f"peak RSS {m.peak_rss_mb:.0f} MB, tree {m.tree_rss_mb:.0f} MB, {state}",
                flush=True,
            )
    report = scenario_report(scenario, load, results)
    print(f"{tag} targets: {_targets_text(report['targets'])}", flush=True)
    return report


def scenario_report(
    scenario: Scenario, load: tuple[float, float, float], results: dict[str, Measured]
) -> dict[str, Any]:
    """One row of the report: what ran, how it went, its ratios and its targets."""
    return {
        "scenario": scenario.label,
        "profile": scenario.profile,
        "data": DATA_LABELS[scenario.profile],
        "load_average": load[0],
        "load_averages": list(load),
        "records": scenario.records,
        "pages": scenario.pages,
        "counts": scenario.counts,
        "latency_ms": scenario.latency_ms,
        "rate_limit": scenario.rate_limit,
        "runs": {k: {**asdict(m), "records_per_s": m.records_per_s} for k, m in results.items()},
        "ratios": _ratios(results),
        "targets": _targets(scenario, results),
    }


def _ratios(results: dict[str, Measured]) -> dict[str, float]:
    ratios: dict[str, float] = {}
    b = results.get("b")
    if b is None or not b.ok:
        return ratios
    for other in ("a", "c"):
        m = results.get(other)
        if m is not None and m.ok and m.wall_s:
            ratios[f"b/{other}"] = round(b.wall_s / m.wall_s, 3)
    c, step = results.get("c"), b.detail.get("steps_s", {}).get(SYNC_STEP)
    if c is not None and c.ok and c.wall_s and step:
        # The sync step alone against the floor: the run less Dagster's start-up and checks.
        ratios["step/c"] = round(step / c.wall_s, 3)
    d = results.get("d")
    if d is not None and d.ok and b.wall_s:
        ratios["d/b"] = round(d.wall_s / b.wall_s, 3)
        if c is not None and c.ok and c.wall_s:
            # The least any run through the CLI can take here: Dagster's own run, then the fetch.
            ratios["(d+c)/c"] = round((d.wall_s + c.wall_s) / c.wall_s, 3)
    return ratios


def _targets(scenario: Scenario, results: dict[str, Measured]) -> dict[str, bool]:
    """The bars of one scenario row, the same for every profile: a project that is fast only on
    the ids it declares would not be fast on a real CRM."""
    b = results.get("b")
    ratios = _ratios(results)
    if b is None or not b.ok:
        return {"project run correct": False}
    if scenario.name == "local":
        targets = {}
        if "a" in results:  # `--only bc` leaves plain dlt out: no verdict on it then
            targets["(b) >= 8x faster than (a)"] = ratios.get("b/a", math.inf) <= 1 / 8
        targets["(b) within 2x of (c)"] = ratios.get("b/c", math.inf) <= 2
        return targets
    if scenario.name == "remote":
        return {
            "(b) within 1.15x of rate floor": ratios.get("b/c", math.inf) <= 1.15,
            "no failed run": b.ok,
        }
    if scenario.name == "scale":
        targets = {"(b) tree peak RSS < 600 MB": b.tree_rss_mb < 600 and b.peak_rss_mb < 600}
        if "c" in results:
            targets["(b) within 1.6x of (c)"] = ratios.get("b/c", math.inf) <= 1.6
        return targets
    return {"project run correct": b.ok}


def _targets_text(targets: dict[str, bool]) -> str:
    return "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items())


# -- report ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "ram_gb": round(mem_kb / 2**20, 1),
        "cpu": cpu or platform.processor(),
        "python": platform.python_version(),
        "dlt": metadata.version("dlt"),
        "dagster": metadata.version("dagster"),
        "dagster-dlt": metadata.version("dagster-dlt"),
        "duckdb": metadata.version("duckdb"),
        "pyarrow": metadata.version("pyarrow"),
    }


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Benchmark of {report['date']} ({'quick' if report['quick'] else 'full'} run), "
        f"`{report['command']}`",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gb']} GB RAM; Python {m['python']}, "
        f"dlt {m['dlt']}, dagster {m['dagster']}, dagster-dlt {m['dagster-dlt']}, "
        f"duckdb {m['duckdb']}, pyarrow {m['pyarrow']}."
        + (f" Extra environment of (b): {report['project_env']}." if report["project_env"] else ""),
        "",
        "| scenario | data | run | wall s | records | records/s | peak RSS MB | tree RSS MB "
        "| correct |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for sc in report["scenarios"]:
        for key, run in sorted(sc["runs"].items()):  # (a), (b), (c), whatever ran first
            computed = "computed" in run["detail"]
            rss = "-" if computed else f"{run['peak_rss_mb']:.0f}"
            tree = "-" if computed else f"{run['tree_rss_mb']:.0f}"
            label = LABELS[key] + (" = pages / rate" if computed else "")
            if key == "c" and not computed:
                label += ", fetch + json only"
            correct = "n/a" if key in ("c", "d") else ("yes" if run["ok"] else "NO")
            if key in ("c", "d") and not run["ok"]:
                correct = "FAILED"
            records = "-" if key == "d" else f"{run['records']:,}"
            per_s = "-" if key == "d" else f"{run['records_per_s']:,.0f}"
            lines.append(
                f"| {sc['scenario']} | {sc['data']} | {label} | {run['wall_s']:.1f} | "
                f"{records} | {per_s} | {rss} | {tree} | {correct} |"
            )
    lines += [
        "",
        "| scenario | data | load avg at start | (b)/(a) | (b)/(c) | (b)'s sync step/(c) "
        "| (d)/(b) | ((d)+(c))/(c) | targets |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for sc in report["scenarios"]:
        r = sc["ratios"]
        ba = f"{r['b/a']:.3f} ({1 / r['b/a']:.1f}x faster)" if "b/a" in r else "-"
        bc = f"{r['b/c']:.2f}" if "b/c" in r else "-"
        step = f"{r['step/c']:.2f}" if "step/c" in r else "-"
        db = f"{r['d/b']:.2f}" if "d/b" in r else "-"
        bound = f"{r['(d+c)/c']:.2f}" if "(d+c)/c" in r else "-"
        load = " / ".join(f"{x:.2f}" for x in sc["load_averages"])
        lines.append(
            f"| {sc['scenario']} | {sc['data']} | {load} | {ba} | {bc} | {step} | {db} | "
            f"{bound} | {_targets_text(sc['targets'])} |"
        )
    lines += ["", *where_the_time_goes(report["scenarios"])]
    notes = []
    for sc in report["scenarios"]:
        b = sc["runs"].get("b", {}).get("detail", {})
        if b:
            notes.append(
                f"- {sc['scenario']}, {sc['data']}: {b.get('retries', 0)} retried requests "
                f"({b.get('http_429_retries', 0)} on 429); id columns loaded as {_id_types(sc)}."
            )
    lines += [
        "",
        "Data: the simulator's `--profile`. declared: records as the declared schema has them, "
        "integer ids; crm: 18-character string ids, undeclared camelCase fields, other "
        "timestamp forms; uuid: UUID ids. Load avg: the 1 / 5 / 15 minute load averages when "
        "the row started. ((d)+(c))/(c): Dagster alone plus the floor, over the floor, the "
        "least any run through the CLI can take on this machine: a target below it cannot be "
        "met here. Peak RSS: the largest single process of the run's tree (`ru_maxrss` "
        "from `os.wait4`); tree RSS: the sum over the process and its descendants, sampled "
        "every 50 ms.",
        *(
            # At --quick sizes the CLI's start-up outweighs the sync: the table shows the
            # harness works, and its targets say nothing about speed.
            ["Quick run: the sizes are too small for the targets to mean anything."]
            if report["quick"]
            else []
        ),
        *notes,
    ]
    return "\n".join(lines) + "\n"


SYNC_STEP = "crm_sync_assets"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def where_the_time_goes(scenarios: list[dict[str, Any]]) -> list[str]:
    """(b)'s wall time taken apart: the CLI's start-up and shut-down (wall time outside every
    step), the sync step and, inside it, dlt's extract (of which: waiting for pages, typing
    records), normalize and load, then the check steps. The `fixed` row's wall time (5 records
    per resource) is the cost of a run with nothing to sync; per record is the rest."""
    fixed = {
        sc["profile"]: sc["runs"]["b"]["wall_s"]
        for sc in scenarios
        if sc["scenario"] == "fixed" and sc["runs"].get("b", {}).get("ok")
    }
    lines = [
        "Where (b)'s time goes, in seconds (per record: wall time less the `fixed` row's, "
        "over the records):",
        "",
        "| scenario | data | wall | start-up + shut-down | sync step | extract | waiting for "
        "pages | typing records | normalize | load | loads | checks | per record µs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sc in scenarios:
        alone = sc["runs"].get("d")
        if alone and alone["ok"]:
            steps = alone["detail"]["steps_s"]
            first = steps.get("assets_0", 0.0)
            lines.append(
                f"| {sc['scenario']} | {sc['data']}, (d) Dagster alone | {alone['wall_s']:.1f} | "
                f"{alone['wall_s'] - sum(steps.values()):.1f} | {first:.2f} | - | - | - | - | - "
                f"| - | {sum(steps.values()) - first:.2f} | - |"
            )
        run = sc["runs"].get("b")
        if not run or not run["ok"]:
            continue
        steps = run["detail"].get("steps_s", {})
        timing = run["detail"].get("timing_s", {})
        sync = steps.get(SYNC_STEP)
        checks = sum(v for k, v in steps.items() if k != SYNC_STEP)
        outside = run["wall_s"] - sum(steps.values())
        base = fixed.get(sc["profile"])
        per_record = (
            f"{(run['wall_s'] - base) / sc['records'] * 1e6:.1f}"
            if base is not None and sc["scenario"] != "fixed"
            else "-"
        )

        lines.append(
            f"| {sc['scenario']} | {sc['data']} | {run['wall_s']:.1f} | {outside:.1f} | "
            f"{_cell(sync)} | {_cell(timing.get('extract'))} | {_cell(timing.get('waiting'))} | "
            f"{_cell(timing.get('typing'))} | {_cell(timing.get('normalize'))} | "
            f"{_cell(timing.get('load'))} | {_cell(timing.get('loads'))} | {checks:.2f} | "
            f"{per_record} |"
        )
    lines += [
        "",
        "Waiting and typing are the longest of any one resource (they run in parallel); "
        "extract less the two is dlt's own extraction (writing the Arrow tables to files). "
        "(d) runs the same steps doing nothing: its sync step materializes the same assets "
        "and its check steps report the same checks, passed.",
    ]
    return lines


def _id_types(sc: dict[str, Any]) -> str:
    """Which DuckDB type (a) and (b) gave the ids, e.g. "(a) VARCHAR, (b) VARCHAR"."""
    parts = []
    for key in ("a", "b"):
        counts = sc["runs"].get(key, {}).get("detail", {}).get("counts", {})
        types = sorted(
            {c["id_type"] for c in counts.values() if isinstance(c, dict) and c.get("id_type")}
        )
        if types:
            parts.append(f"({key}) {'/'.join(types)}")
    return ", ".join(parts) or "?"


def parse_profiles(value: str) -> list[str]:
    """`--profile`: one profile, `all`, or a comma-separated list, in the order given."""
    chosen: list[str] = []
    for item in value.split(","):
        name = item.strip()
        if name not in (*PROFILES, "all"):
            raise argparse.ArgumentTypeError(
                f"unknown profile {name!r}; expected {', '.join(PROFILES)} or all"
            )
        for profile in PROFILES if name == "all" else (name,):
            if profile not in chosen:
                chosen.append(profile)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument(
        "--profile",
        type=parse_profiles,
        default=DEFAULT_PROFILES,
        metavar="{declared,crm,uuid,all}",
        help="the simulator's data profile(s) to run every scenario on: one of them, all, or a "
        "comma-separated list such as declared,crm (default %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument(
        "--results-dir", type=Path, default=BENCH_DIR / "results", help="where results go"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, DBs)")
    parser.add_argument(
        "--project-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for (b), e.g. CRM_EXECUTOR=in_process (to measure a setting)",
    )
    parser.add_argument(
        "--only", default="", help="run only these contenders, e.g. 'b' or 'bc' (for profiling)"
    )
    args = parser.parse_args(argv)
    PROJECT_ENV.update(item.split("=", 1) for item in args.project_env if "=" in item)
    table = QUICK if args.quick else SCENARIOS
    names = list(table) if args.scenario == "all" else [args.scenario]
    if args.only:
        table = {
            name: tuple(
                replace(sc, contenders=tuple(c for c in sc.contenders if c in args.only))
                for sc in rows
            )
            for name, rows in table.items()
        }
    workroot = Path(tempfile.mkdtemp(prefix="crm-bench-"))
    try:
        # Profiles inside scenarios: the rows of one scenario stand next to each other.
        scenarios = [
            run_scenario(replace(row, profile=profile), workroot)
            for name in names
            for row in table[name]
            for profile in args.profile
        ]
    finally:
        if args.keep:
            print(f"work folder kept: {workroot}")
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "command": "python benchmarks/run.py "
        + " ".join(a for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine(),
        "project_env": PROJECT_ENV,
        "profiles": args.profile,
        "scenarios": scenarios,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = to_markdown(report)
    (args.results_dir / "latest.md").write_text(markdown)
    print(markdown)
    return 0 if all(s["runs"][k]["ok"] for s in scenarios for k in s["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())

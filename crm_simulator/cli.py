"""``crm-simulator`` / ``python -m crm_simulator``: run the CRM API simulator."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from .faults import Faults
from .profiles import PROFILES
from .records import DEFAULT_COUNTS, RESOURCES
from .server import CRMSimulator

PROG = "crm-simulator"

_FAULTS_HELP = """\
faults (repeat --fault NAME=VALUE, or give --faults JSON; --fault wins):
  rates (fraction of requests, 0..1): rate_429 rate_500 rate_502 rate_503 rate_504
      rate_drop rate_slow rate_not_json rate_no_data rate_data_not_list rate_no_total
  retry_after=SECONDS (for rate_429)   slow_seconds=SECONDS (for rate_slow)
  omit_total=true   insert_during_paging=N   seed=N   max_faults=N
  only_resources=customers,leads
  example: --fault rate_503=0.1 --fault rate_429=0.05 --fault only_resources=customers

secrets: --api-key/--access-key default to $CRM_API_KEY/$CRM_ACCESS_KEY; they are never
printed. An empty --access-key turns the access key check off.
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a simulated CRM REST API (GET /v1/<resource>) with deterministic "
        f"data. Resources: {', '.join(RESOURCES)}.",
        epilog=_FAULTS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8765, help="port (default %(default)s; 0 picks a free one)"
    )
    parser.add_argument(
        "--api-key", default=None, help="api key (default $CRM_API_KEY, else demo-api-key)"
    )
    parser.add_argument(
        "--access-key",
        default=None,
        help="access key (default $CRM_ACCESS_KEY, else demo-access-key)",
    )
    parser.add_argument(
        "--access-key-name",
        default="X-Access-Key",
        help="header or query parameter carrying the access key",
    )
    parser.add_argument("--access-key-location", choices=("header", "query"), default="header")
    parser.add_argument("--seed", type=int, default=42, help="data seed (default %(default)s)")
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default="declared",
        help="which CRM to be: records as the declared schema has them (declared), shaped like "
        "a real CRM's with string ids and undeclared fields (crm), or with UUID ids (uuid); "
        "default %(default)s",
    )
    parser.add_argument(
        "--strict-params",
        action="store_true",
        help="answer 400 to any query parameter the CRM does not know",
    )
    parser.add_argument(
        "--notes",
        action="store_true",
        help="also serve customer notes at GET /v1/customers/<id>/notes",
    )
    incremental = parser.add_mutually_exclusive_group()
    incremental.add_argument(
        "--filter-param",
        default="updated_since",
        metavar="NAME",
        help="query parameter of the incremental filter (updated_at >= value); default %(default)s",
    )
    incremental.add_argument(
        "--no-filter",
        dest="filter_param",
        action="store_const",
        const=None,
        help="the CRM has no incremental filter",
    )
    parser.add_argument(
        "--count",
        action="append",
        default=[],
        metavar="RESOURCE=N",
        help="record count of one resource (repeatable; applied after --scale)",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every default count by this factor"
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added delay per request")
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=None,
        help="requests/s allowed (token bucket); beyond it 429 + Retry-After",
    )
    parser.add_argument(
        "--rate-burst",
        type=float,
        default=0.1,
        help="seconds' worth of requests the token bucket lets through at once (default 0.1; "
        "API gateways often allow 1)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set one Faults field (repeatable; see below)",
    )
    parser.add_argument(
        "--faults",
        default=None,
        metavar="JSON",
        help="Faults fields as a JSON object, e.g. '{\"rate_500\": 0.1}'",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="write the base URL to this file once listening",
    )
    return parser


def _parse_counts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, int]:
    if args.scale < 0:
        parser.error("--scale must be >= 0")
    counts = {name: round(n * args.scale) for name, n in DEFAULT_COUNTS.items()}
    for item in args.count:
        name, sep, value = item.partition("=")
        if not sep or name not in DEFAULT_COUNTS or not value.isdigit():
            parser.error(f"--count expects RESOURCE=N with RESOURCE in {', '.join(RESOURCES)}")
        counts[name] = int(value)
    return counts


def _fault_value(name: str, raw: Any) -> Any:
    """Convert a CLI/JSON value to the type of the Faults field ``name``."""
    if name == "only_resources":
        if raw is None or (isinstance(raw, str) and raw.lower() in ("", "none")):
            return None
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        unknown = [r for r in items if not r]
        if unknown:
            raise ValueError("empty resource name")
        return tuple(items)
    if name == "omit_total":
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("1", "true", "yes", "on"):
            return True
        if str(raw).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if name == "max_faults":
        return None if raw is None or str(raw).lower() == "none" else int(raw)
    if name in ("seed", "insert_during_paging"):
        return int(raw)
    value = float(raw)
    if name.startswith("rate_") and not 0.0 <= value <= 1.0:
        raise ValueError("a rate must be between 0 and 1")
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _parse_faults(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Faults:
    names = set(Faults.field_names())
    settings: dict[str, Any] = {}
    if args.faults:
        try:
            loaded = json.loads(args.faults)
        except json.JSONDecodeError as exc:
            parser.error(f"--faults is not valid JSON: {exc.msg}")
        if not isinstance(loaded, dict):
            parser.error("--faults must be a JSON object")
        settings.update(loaded)
    for item in args.fault:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--fault expects NAME=VALUE, got {item!r}")
        settings[name.strip()] = value.strip()
    faults = Faults()
    for name, raw in settings.items():
        if name not in names:
            parser.error(f"unknown fault field {name!r}; see --help")
        try:
            value = _fault_value(name, raw)
        except (TypeError, ValueError) as exc:
            parser.error(f"bad value for fault {name}: {exc}")
        faults = dataclasses.replace(faults, **{name: value})
    return faults


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGTERM/SIGINT; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    counts = _parse_counts(parser, args)
    faults = _parse_faults(parser, args)
    api_key = (
        args.api_key if args.api_key is not None else os.environ.get("CRM_API_KEY", "demo-api-key")
    )
    access_key = (
        args.access_key
        if args.access_key is not None
        else os.environ.get("CRM_ACCESS_KEY", "demo-access-key")
    )

    try:
        sim = CRMSimulator(
            counts,
            api_key=api_key,
            access_key=access_key or None,
            access_key_name=args.access_key_name,
            access_key_location=args.access_key_location,
            seed=args.seed,
            faults=faults,
            latency_ms=args.latency_ms,
            rate_limit=args.rate_limit,
            rate_burst=args.rate_burst,
            host=args.host,
            port=args.port,
            profile=args.profile,
            strict_params=args.strict_params,
            filter_param=args.filter_param,
            notes=args.notes,
        )
    except ValueError as exc:
        # Options that contradict each other, e.g. --filter-param limit.
        parser.error(str(exc))
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        # Installed before start, so a signal during data generation also exits cleanly.
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        return _serve(sim, args, counts, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(
    sim: CRMSimulator, args: argparse.Namespace, counts: dict[str, int], stop: threading.Event
) -> int:
    try:
        sim.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(
                f"{PROG}: port {args.port} is in use; pick another with --port "
                "(or --port 0 for a free one)",
                file=sys.stderr,
            )
        else:
            print(
                f"{PROG}: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
                file=sys.stderr,
            )
        return 2

    try:
        if args.ready_file is not None:
            # Write then rename, so a script polling for the file never reads half a URL.
            tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
            tmp.write_text(sim.base_url + "\n", encoding="utf-8")
            tmp.replace(args.ready_file)
        # Printed after the ready file exists, so whoever reads this line can also read the file.
        summary = ", ".join(f"{name}={n}" for name, n in counts.items())
        if sim.profile != "declared":
            summary += f"; profile {sim.profile}"
        if sim.notes_enabled:
            summary += "; customer notes"
        print(f"CRM simulator listening on {sim.base_url} ({summary})", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
        if args.ready_file is not None:
            # A stale file would tell the next script a dead server is ready.
            args.ready_file.unlink(missing_ok=True)
    return 0

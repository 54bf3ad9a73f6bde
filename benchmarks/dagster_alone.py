"""Dagster's own cost of a run of the project's shape, with nothing in its steps.

    dagster asset materialize -f benchmarks/dagster_alone.py --select '*'

The shape (which assets each step materializes, which checks each check step evaluates) comes
from the JSON file named by BENCH_SHAPE, written by `benchmarks/run.py` from the project's own
definitions: the same steps, planned events, materializations and check evaluations as a run
of the project, through the same CLI and executor, but no sync, no warehouse and no dlt import.
What a run of the project takes beyond this is the project's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSpec,
    AssetKey,
    AssetSpec,
    Definitions,
    MaterializeResult,
    in_process_executor,
    multi_asset,
    multi_asset_check,
)


def _assets(index: int, keys: list[str]) -> object:
    @multi_asset(
        name=f"assets_{index}", specs=[AssetSpec(AssetKey.from_user_string(k)) for k in keys]
    )
    def _noop() -> Iterator[MaterializeResult]:
        for key in keys:
            yield MaterializeResult(asset_key=AssetKey.from_user_string(key))

    return _noop


def _checks(index: int, checks: list[list[str]]) -> object:
    keys = [AssetCheckKey(AssetKey.from_user_string(asset), name) for asset, name in checks]

    @multi_asset_check(
        name=f"checks_{index}", specs=[AssetCheckSpec(k.name, asset=k.asset_key) for k in keys]
    )
    def _noop() -> Iterator[AssetCheckResult]:
        for key in keys:
            yield AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=True)

    return _noop


def build() -> Definitions:
    shape = json.loads(Path(os.environ["BENCH_SHAPE"]).read_text())
    return Definitions(
        assets=[_assets(i, keys) for i, keys in enumerate(shape["assets"])],
        asset_checks=[_checks(i, checks) for i, checks in enumerate(shape["checks"])],
        executor=in_process_executor,  # the project's default executor
    )


defs = build()

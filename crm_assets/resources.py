"""Dagster resources: the CRM's credentials and the warehouse, both resolved at run time.

Loading the definitions reads no secret and touches no file: every setting, secrets included,
is read from the environment only when a run asks for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import dlt
from dagster import ConfigurableResource, EnvVar
from dlt.pipeline.pipeline import Pipeline
from pydantic import Field

from crm_assets.client import CRMConfigError, CRMConnection

REPO_ROOT = Path(__file__).resolve().parent.parent
# Not `crm.duckdb`: a DuckDB file named like the dataset makes `crm.<table>` ambiguous.
DEFAULT_DUCKDB_PATH = REPO_ROOT / "data" / "warehouse.duckdb"
PIPELINE_NAME = "crm_sync"


def _setting(value: str | None, env: str, default: str | None = None) -> str | None:
    if value:
        return value
    return os.environ.get(env) or default


def _required(value: str | None, env: str) -> str:
    """A setting the run cannot do without: given in run config, else read from `env` now."""
    resolved = value or EnvVar(env).get_value()
    if not resolved:
        raise CRMConfigError(
            f"{env} is not set: export {env} where dagster dev, the daemon or the CLI runs "
            "(README: Point it at your CRM)"
        )
    return resolved


class CRMCredentials(ConfigurableResource):
    """Where the CRM is and the two secrets it wants (`api_key` in the query string, as the API
    documents; `access_key` in a header or the query, as your CRM expects).

    Each field falls back to its environment variable, read through Dagster's `EnvVar` when a
    run starts rather than when Dagster resolves the run's config: a missing secret then fails
    the run at once with one line in its log, naming the variable, where config resolution
    would refuse the launch with a stack trace and leave no run to look at. The values are
    never part of the run's config, so the UI, the event log and run storage never hold them.
    """

    base_url: str | None = Field(default=None, description="CRM API base URL (CRM_BASE_URL).")
    api_key: str | None = Field(
        default=None, description="API key, sent as the `api_key` query parameter (CRM_API_KEY)."
    )
    access_key: str | None = Field(
        default=None, description="Second secret the API requires (CRM_ACCESS_KEY)."
    )
    access_key_name: str | None = Field(
        default=None,
        description="Header or query parameter that carries the access key "
        "(CRM_ACCESS_KEY_NAME, default X-Access-Key).",
    )
    access_key_location: str | None = Field(
        default=None,
        description="Where the access key travels (CRM_ACCESS_KEY_LOCATION, default header).",
    )

    def connection(self) -> CRMConnection:
        location = _setting(self.access_key_location, "CRM_ACCESS_KEY_LOCATION", "header")
        return CRMConnection(
            base_url=_required(self.base_url, "CRM_BASE_URL"),
            api_key=_required(self.api_key, "CRM_API_KEY"),
            access_key=_required(self.access_key, "CRM_ACCESS_KEY"),
            access_key_name=_setting(self.access_key_name, "CRM_ACCESS_KEY_NAME", "X-Access-Key")
            or "X-Access-Key",
            access_key_location=location,  # type: ignore[arg-type]  # validated by CRMConnection
        )


class CRMWarehouse(ConfigurableResource):
    """The dlt destination the CRM lands in: a DuckDB file unless told otherwise."""

    destination: str | None = Field(
        default=None,
        description="dlt destination name (CRM_DESTINATION, default duckdb). Credentials of "
        "other destinations come from dlt's own settings, e.g. DESTINATION__POSTGRES__CREDENTIALS.",
    )
    duckdb_path: str | None = Field(
        default=None, description="DuckDB file (CRM_DUCKDB_PATH, default data/warehouse.duckdb)."
    )
    dataset_name: str | None = Field(
        default=None, description="Schema the tables land in (CRM_DATASET, default crm)."
    )
    pipelines_dir: str | None = Field(
        default=None,
        description="Where dlt keeps its working state (CRM_PIPELINES_DIR, default dlt's own).",
    )

    def destination_name(self) -> str:
        return _setting(self.destination, "CRM_DESTINATION", "duckdb") or "duckdb"

    def dataset(self) -> str:
        return _setting(self.dataset_name, "CRM_DATASET", "crm") or "crm"

    def database_path(self) -> Path:
        path = _setting(self.duckdb_path, "CRM_DUCKDB_PATH") or str(DEFAULT_DUCKDB_PATH)
        return Path(path).expanduser().resolve()

    def pipeline(self) -> Pipeline:
        """A dlt pipeline for this warehouse; creates its folders, so call it at run time."""
        name = self.destination_name()
        if name == "duckdb":
            path = self.database_path()
            if path.stem == self.dataset():
                raise CRMConfigError(
                    f"CRM_DUCKDB_PATH {path.name} is named like the dataset {self.dataset()!r}; "
                    "DuckDB would find `crm.<table>` ambiguous. Pick another file name."
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            destination = dlt.destinations.duckdb(str(path))
        else:
            destination = name
        return dlt.pipeline(
            pipeline_name=PIPELINE_NAME,
            destination=destination,
            dataset_name=self.dataset(),
            pipelines_dir=_setting(self.pipelines_dir, "CRM_PIPELINES_DIR"),
            progress="log" if os.environ.get("CRM_DLT_PROGRESS") else None,
        )

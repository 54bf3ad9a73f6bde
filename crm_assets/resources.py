"""Dagster resources: the CRM's credentials and the warehouse, both resolved at run time.

Loading the definitions needs no setting: every setting, secrets included, is looked up (in the
environment, and for the CRM's address and keys in dlt's settings too) only when a run asks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dlt
from dagster import ConfigurableResource, EnvVar
from dlt.common.configuration.exceptions import ConfigProviderException
from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials
from dlt.pipeline.pipeline import Pipeline
from pydantic import Field

from crm_assets.api import API_KEY_PARAM, DEFAULT_BASE_URL
from crm_assets.deletes import DELETE_MODES, DeleteMode
from crm_assets.errors import CRMConfigError
from crm_assets.source import Chunking
from crm_assets.transport import CRMConnection, RequestPolicy

REPO_ROOT = Path(__file__).resolve().parent.parent
# Not `crm.duckdb`: a DuckDB file named like the dataset makes `crm.<table>` ambiguous.
DEFAULT_DUCKDB_PATH = REPO_ROOT / "data" / "warehouse.duckdb"
PIPELINE_NAME = "crm_sync"
DUCKDB_CONFIG_ENV = "DESTINATION__DUCKDB__CREDENTIALS__GLOBAL_CONFIG"
DUCKDB_GLOBAL_CONFIG = {"memory_limit": "160MB", "preserve_insertion_order": False, "threads": 1}
# Where dlt keeps the CRM's settings: `[sources.crm]` in .dlt/secrets.toml or .dlt/config.toml,
# SOURCES__CRM__API_KEY and the like in the environment. The API's spec keeps the two keys in
# dlt's secrets, so a project set up that way needs no CRM_* variable.
DLT_SECTION = "sources.crm"


def _setting(value: str | None, env: str, default: str | None = None) -> str | None:
    if value:
        return value
    return os.environ.get(env) or default


def _from_dlt(key: str, *, secret: bool) -> str | None:
    """`key` of the `[sources.crm]` section as dlt resolves it: SOURCES__CRM__<KEY> in the
    environment, then .dlt/secrets.toml, then (for a setting that is not secret) .dlt/config.toml,
    each file looked for in the working directory's `.dlt/` and in dlt's global folder."""
    # `dlt.secrets` asks only the providers that may hold secrets, so a key left in config.toml
    # (the file meant to be committed) is not taken; and it marks the lookup secret, so the trace
    # dlt keeps of resolved settings records where the key came from but not its value.
    accessor = dlt.secrets if secret else dlt.config
    try:
        value = accessor.get(f"{DLT_SECTION}.{key}")
    except ConfigProviderException as exc:
        # dlt's message spans lines; the run log's failure line must be one.
        raise CRMConfigError(
            f"dlt could not read its settings for [{DLT_SECTION}] {key}: "
            + " ".join(str(exc).split())
        ) from None
    if value is None:
        return None
    if not isinstance(value, str):
        # The value itself is not shown: it may be a secret typed without its quotes.
        raise CRMConfigError(
            f"{key} under [{DLT_SECTION}] must be a quoted string, got a {type(value).__name__}"
        )
    # Docker and Kubernetes secret files, which dlt reads too, often end with a newline.
    return value.strip() or None


def _required(
    value: str | None, env: str, key: str, *, secret: bool, default: str | None = None
) -> str:
    """A setting the run cannot do without: given in run config, else read from `env` now,
    else from dlt's settings under `[sources.crm]`, else `default`."""
    resolved = value or EnvVar(env).get_value() or _from_dlt(key, secret=secret) or default
    if not resolved:
        settings_file = "secrets.toml" if secret else "config.toml"
        raise CRMConfigError(
            f"{env} is not set: export {env} where dagster dev, the daemon or the CLI runs, "
            f"or put {key} under [{DLT_SECTION}] in .dlt/{settings_file} "
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

    `base_url`, `api_key` and `access_key` then fall back to dlt's settings under
    `[sources.crm]` (SOURCES__CRM__<KEY>, .dlt/secrets.toml, .dlt/config.toml for the URL), so
    the order is: this resource's config > CRM_* variable > dlt. dlt reads its files once per
    process and Dagster starts a process for each run, so an edited file counts from the next run.
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

    def connection(self, client: Mapping[str, Any] | None = None) -> CRMConnection:
        """The connection for a sync. `client` is the REST config's `client`: its `base_url` (unless
        it is the seed's placeholder) is the fallback of CRM_BASE_URL, and its `api_key` auth says
        which query parameter carries the key."""
        location = _setting(self.access_key_location, "CRM_ACCESS_KEY_LOCATION", "header")
        client = client or {}
        configured = client.get("base_url")
        auth = client.get("auth") if isinstance(client.get("auth"), Mapping) else {}
        return CRMConnection(
            base_url=_required(
                self.base_url,
                "CRM_BASE_URL",
                "base_url",
                secret=False,
                default=None if configured == DEFAULT_BASE_URL else configured,
            ),
            api_key_name=str(auth.get("name") or API_KEY_PARAM),
            api_key=_required(self.api_key, "CRM_API_KEY", "api_key", secret=True),
            access_key=_required(self.access_key, "CRM_ACCESS_KEY", "access_key", secret=True),
            access_key_name=_setting(self.access_key_name, "CRM_ACCESS_KEY_NAME", "X-Access-Key")
            or "X-Access-Key",
            access_key_location=location,  # type: ignore[arg-type]  # validated by CRMConnection
        )


def _number(
    value: float | None,
    env: str,
    default: float,
    cast: Callable[[str], float],
    zero_ok: bool = False,
) -> Any:
    """A positive number (or zero, where that turns something off): the resource's field, else
    the environment variable, else `default`."""
    if value is not None:
        raw: Any = value
    else:
        raw = os.environ.get(env)
        if raw is None or raw == "":
            return default
    try:
        number = cast(raw)
    except ValueError:
        raise CRMConfigError(f"{env} must be a number, got {raw!r}") from None
    if number < 0 or (number == 0 and not zero_ok):
        least = "zero or more" if zero_ok else "greater than zero"
        raise CRMConfigError(f"{env} must be {least}, got {raw!r}")
    return number


class CRMRequestSettings(ConfigurableResource):
    """How hard a sync tries against the CRM. Each field defaults from its environment variable,
    read when a run starts, then from the built-in default; set them here (or in the UI's
    launchpad) to tune one deployment without touching its environment."""

    max_attempts: int | None = Field(
        default=None,
        description="Attempts per request, the first included (CRM_REQUEST_MAX_ATTEMPTS, "
        "default 10). Only 429, 5xx, timeouts and dropped connections are retried.",
    )
    backoff: float | None = Field(
        default=None,
        description="First backoff in seconds, doubled per retry, with jitter "
        "(CRM_REQUEST_BACKOFF, default 0.5).",
    )
    max_backoff: float | None = Field(
        default=None,
        description="Longest wait between attempts, Retry-After included "
        "(CRM_REQUEST_MAX_BACKOFF, default 30).",
    )
    connect_timeout: float | None = Field(
        default=None, description="Seconds to connect (CRM_CONNECT_TIMEOUT, default 10)."
    )
    request_timeout: float | None = Field(
        default=None,
        description="Seconds to wait for an answer (CRM_REQUEST_TIMEOUT, default 30).",
    )
    concurrency: int | None = Field(
        default=None,
        description="Requests in flight at once (CRM_CONCURRENCY, default 8); the pacer keeps "
        "them under the API's rate limit once it answers 429.",
    )

    def policy(self) -> RequestPolicy:
        d = RequestPolicy()
        return RequestPolicy(
            max_attempts=_number(
                self.max_attempts, "CRM_REQUEST_MAX_ATTEMPTS", d.max_attempts, int
            ),
            backoff_base=_number(self.backoff, "CRM_REQUEST_BACKOFF", d.backoff_base, float),
            backoff_max=_number(self.max_backoff, "CRM_REQUEST_MAX_BACKOFF", d.backoff_max, float),
            connect_timeout=_number(
                self.connect_timeout, "CRM_CONNECT_TIMEOUT", d.connect_timeout, float
            ),
            read_timeout=_number(
                self.request_timeout, "CRM_REQUEST_TIMEOUT", d.read_timeout, float
            ),
            concurrency=_number(self.concurrency, "CRM_CONCURRENCY", d.concurrency, int),
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
    deletes: str | None = Field(
        default=None,
        description="What a complete read does to rows whose id the CRM no longer returns: "
        "soft (set _crm_deleted_at), hard (remove them) or off (CRM_DELETES, default soft).",
    )
    max_delete_share: float | None = Field(
        default=None,
        description="Largest share of a table one read may mark deleted; beyond it nothing is "
        "marked and the run fails (CRM_MAX_DELETE_SHARE, default 0.5).",
    )
    chunk_records: int | None = Field(
        default=None,
        description="A long sync lands what it fetched after this many records (shared by the "
        "resources read at once) and remembers where each read was, so a run that stops goes "
        "on from there the next time (CRM_CHUNK_RECORDS, default 400000; 0: no limit by count).",
    )
    chunk_seconds: float | None = Field(
        default=None,
        description="Or after this many seconds of reading, whichever comes first "
        "(CRM_CHUNK_SECONDS, default 300; 0: no limit by time).",
    )
    sync_lock_timeout: float | None = Field(
        default=None,
        description="Seconds a sync waits for another one on the same warehouse to finish "
        "(CRM_SYNC_LOCK_TIMEOUT, default 3600).",
    )

    def delete_mode(self) -> DeleteMode:
        mode = (_setting(self.deletes, "CRM_DELETES", "soft") or "soft").strip().lower()
        if mode not in DELETE_MODES:
            raise CRMConfigError(
                f"CRM_DELETES must be one of {', '.join(DELETE_MODES)}, got {mode!r}"
            )
        return mode  # type: ignore[return-value]

    def delete_share(self) -> float:
        share = _number(self.max_delete_share, "CRM_MAX_DELETE_SHARE", 0.5, float)
        if share > 1:
            raise CRMConfigError(f"CRM_MAX_DELETE_SHARE must be at most 1, got {share!r}")
        return float(share)

    def chunking(self) -> Chunking:
        d = Chunking()
        return Chunking(
            records=_number(self.chunk_records, "CRM_CHUNK_RECORDS", d.records, int, True),
            seconds=_number(self.chunk_seconds, "CRM_CHUNK_SECONDS", d.seconds, float, True),
        )

    def destination_name(self) -> str:
        return _setting(self.destination, "CRM_DESTINATION", "duckdb") or "duckdb"

    def dataset(self) -> str:
        return _setting(self.dataset_name, "CRM_DATASET", "crm") or "crm"

    def database_path(self) -> Path:
        path = _setting(self.duckdb_path, "CRM_DUCKDB_PATH") or str(DEFAULT_DUCKDB_PATH)
        return Path(path).expanduser().resolve()

    def _duckdb_credentials(self, path: Path) -> DuckDbCredentials | str:
        """The DuckDB file, with a memory cap unless dlt's own DuckDB settings say otherwise.

        DuckDB's buffer pool may take 80% of RAM by default, so the merge made a run's RSS grow
        with the record count (1.3 GB at 2,000,000 records); capped, DuckDB spills to its temp
        folder instead (0.68 GB, same load time). The peak of a sync is in its loads, so the cap
        sets it: measured here on string ids, 256 MB gave 637-644 MB peak RSS at 402,000 records
        and 656 MB at 2,002,000; 160 MB gave 539-543 and 566 MB, for loads 0.4-0.5 s and 3.1 s
        (17%) longer; 128 MB gave 516-525 MB and loads 1.6 s longer at 402,000. Set
        DESTINATION__DUCKDB__CREDENTIALS__GLOBAL_CONFIG to trade memory for speed."""
        if os.environ.get(DUCKDB_CONFIG_ENV):
            return str(path)  # the user's global_config, resolved by dlt
        credentials = DuckDbCredentials(str(path))
        credentials.global_config = dict(DUCKDB_GLOBAL_CONFIG)
        return credentials

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
            destination = dlt.destinations.duckdb(self._duckdb_credentials(path))
        else:
            destination = name
        return dlt.pipeline(
            pipeline_name=PIPELINE_NAME,
            destination=destination,
            dataset_name=self.dataset(),
            pipelines_dir=_setting(self.pipelines_dir, "CRM_PIPELINES_DIR"),
            progress="log" if os.environ.get("CRM_DLT_PROGRESS") else None,
        )

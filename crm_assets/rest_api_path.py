"""Resources the fast path does not cover, extracted by dlt's own `rest_api` machinery.

The fast path (client.py) covers the API contract: GET, a static path, a `data_selector`, offset
paging (or one page), static `params` and the declared `incremental` filter. Any other entry that
dlt's `RESTAPIConfig` accepts — a JSON-link or cursor paginator, a dependent resource
(`/v1/customers/{resources.customers.id}/notes`), `processing_steps`, `response_actions`, another
auth type — is built by `rest_api_resources` from the same config, with the CRM's secrets filled
in at run time, and its pages go through the same typing, counters, metadata and checks.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dlt.common.configuration import configspec
from dlt.common.typing import TSecretStrValue
from dlt.extract.resource import DltResource
from dlt.sources.helpers.rest_client.auth import APIKeyAuth
from dlt.sources.rest_api import rest_api_resources
from requests import PreparedRequest

from crm_assets.errors import CRMError
from crm_assets.transport import CRMConnection

FAST_ENDPOINT_KEYS = frozenset({"path", "data_selector", "paginator", "params", "incremental"})
FAST_ENTRY_KEYS = frozenset(
    {
        "name",
        "endpoint",
        "primary_key",
        "write_disposition",
        "columns",
        "references",
        "selected",
        "parallelized",
    }
)
FAST_PAGINATOR_KEYS = frozenset({"type", "limit", "offset_param", "limit_param", "total_path"})


def client_gap(client: Mapping[str, Any]) -> str | None:
    """The first feature of the config's `client` the fast path does not cover, or None: then
    every resource goes through dlt."""
    extra = sorted(set(client) - {"base_url", "auth"})
    if extra:
        return f"client.{extra[0]}"
    auth = client.get("auth")
    if auth is None:
        return None
    if not isinstance(auth, Mapping) or auth.get("type", "api_key") != "api_key":
        return "client.auth other than an api_key"
    if auth.get("location", "header") != "query":
        return "client.auth api_key outside the query"
    return None


def fast_path_gap(entry: Mapping[str, Any]) -> str | None:
    """The first feature of a resource entry that the fast path does not cover, or None."""
    extra = sorted(set(entry) - FAST_ENTRY_KEYS)
    if extra:
        return extra[0]
    endpoint = entry.get("endpoint")
    if not isinstance(endpoint, Mapping):
        return "endpoint given as a path alone (no data_selector)"
    extra = sorted(set(endpoint) - FAST_ENDPOINT_KEYS)
    if extra:
        return f"endpoint.{extra[0]}"
    if "{" in str(endpoint.get("path", "")):
        return "a path that refers to another resource"
    if not endpoint.get("data_selector"):
        return "no data_selector"
    paginator = endpoint.get("paginator")
    if paginator is not None and (
        not isinstance(paginator, Mapping)
        or paginator.get("type") != "offset"
        or set(paginator) - FAST_PAGINATOR_KEYS
    ):
        return "a paginator other than offset"
    if any(isinstance(v, Mapping) for v in (endpoint.get("params") or {}).values()):
        return "params resolved at run time"
    return None


def _parents(entry: Mapping[str, Any]) -> set[str]:
    """Resources a dependent entry reads from (`{resources.<name>.<field>}` in its path or
    params, or dlt's older `resolve` params)."""
    endpoint = entry.get("endpoint")
    if not isinstance(endpoint, Mapping):
        return set()
    text = str(endpoint.get("path", "")) + str(endpoint.get("params", ""))
    names = {part.split(".")[0] for part in text.split("{resources.")[1:] if "." in part}
    names |= {
        v["resource"]
        for v in (endpoint.get("params") or {}).values()
        if isinstance(v, Mapping) and v.get("type") == "resolve"
    }
    return names


def _for_dlt(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry as dlt should see it: typing is ours (see conversion.py), so no column hints."""
    out = copy.deepcopy(dict(entry))
    out.pop("columns", None)
    return out


@configspec
class CRMKeysAuth(APIKeyAuth):
    """dlt's `api_key` auth plus the CRM's access key, on every request dlt makes, followed
    links included (a link keeps none of the first request's parameters)."""

    access_key: TSecretStrValue = None
    access_key_name: str = "X-Access-Key"
    access_key_location: str = "header"

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        request = super().__call__(request)
        if self.access_key:
            if self.access_key_location == "query":
                request.prepare_url(request.url, {self.access_key_name: self.access_key})
            else:
                request.headers[self.access_key_name] = self.access_key
        return request


def _client(config: Mapping[str, Any], connection: CRMConnection) -> dict[str, Any]:
    """The config's client with the CRM's address and secrets filled in: the `api_key` auth the
    config declares, with the access key where CRM_ACCESS_KEY_LOCATION says."""
    client = copy.deepcopy(dict(config.get("client") or {}))
    client["base_url"] = connection.base_url
    auth = client.get("auth")
    if isinstance(auth, Mapping) and auth.get("type", "api_key") == "api_key":
        client["auth"] = CRMKeysAuth(
            name=auth.get("name", "Authorization"),
            api_key=connection.api_key,
            location=auth.get("location", "header"),
            access_key=connection.access_key,
            access_key_name=connection.access_key_name,
            access_key_location=connection.access_key_location,
        )
    elif connection.access_key and connection.access_key_location == "header":
        client["headers"] = {
            **(client.get("headers") or {}),
            connection.access_key_name: connection.access_key,
        }
    return client


def _keys_in_params(config: Mapping[str, Any]) -> bool:
    """Whether the access key must travel as an endpoint parameter (an auth of another type)."""
    auth = (config.get("client") or {}).get("auth")
    return not (isinstance(auth, Mapping) and auth.get("type", "api_key") == "api_key")


def dlt_rest_resources(
    config: Mapping[str, Any], names: Sequence[str], connection: CRMConnection
) -> dict[str, DltResource]:
    """dlt's resources for the entries `names` of `config` (with the parents they read from)."""
    entries = {e["name"]: e for e in config["resources"] if isinstance(e, Mapping)}
    wanted = set(names)
    pending = list(names)
    while pending:
        for parent in _parents(entries[pending.pop()]):
            if parent not in wanted and parent in entries:
                wanted.add(parent)
                pending.append(parent)
    resources = []
    for name in wanted:
        entry = _for_dlt(entries[name])
        if (
            connection.access_key
            and connection.access_key_location == "query"
            and _keys_in_params(config)
        ):
            endpoint = entry["endpoint"]
            if not isinstance(endpoint, Mapping):
                endpoint = entry["endpoint"] = {"path": endpoint}
            endpoint["params"] = {
                **(endpoint.get("params") or {}),
                connection.access_key_name: connection.access_key,
            }
        resources.append(entry)
    built = rest_api_resources(
        {
            "client": _client(config, connection),  # type: ignore[typeddict-item]
            "resource_defaults": copy.deepcopy(config.get("resource_defaults") or {}),
            "resources": resources,
        }
    )
    return {r.name: r for r in built if r.name in names}


def dlt_pages(resource: DltResource, connection: CRMConnection) -> Iterator[list[dict[str, Any]]]:
    """The record lists dlt's resource yields; its failures become one line without secrets."""
    try:
        for item in resource:
            yield item if isinstance(item, list) else [item]
    except CRMError:
        raise
    except Exception as exc:
        raise CRMError(f"{resource.name}: {scrub(_innermost(exc), connection.secrets)}") from None


def _innermost(exc: BaseException) -> str:
    """dlt wraps a resource's failure in pipe errors; the cause says what went wrong."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class SecretScrubber(logging.Filter):
    """dlt's REST client logs request URLs and redacts the query parameters it knows as secret;
    the access key is not one of them, and urllib3 redacts nothing in its DEBUG lines. This
    filter masks both secrets in every record of the logger it is put on."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(s in message for s in self.secrets):
            record.msg, record.args = scrub(message, self.secrets), None
        return True

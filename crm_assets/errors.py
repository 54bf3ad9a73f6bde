"""What can go wrong in a sync, as data: each error carries its resource, kind, path and fix, and
its message is one line that is safe to show (no secret, no record data)."""

from __future__ import annotations

from typing import Any, Protocol


class Log(Protocol):
    """What the client needs of a logger: Python's and Dagster's both fit."""

    def info(self, msg: str, *args: Any) -> Any: ...
    def warning(self, msg: str, *args: Any) -> Any: ...


class CRMError(Exception):
    """A sync failure whose message is one line, safe to show: no secret, no record data."""


class CRMConfigError(CRMError):
    """The project is not set up to reach the CRM (a missing or invalid setting)."""


class CRMAPIError(CRMError):
    """The CRM answered in a way a retry cannot fix, or kept failing until attempts ran out."""

    def __init__(
        self, resource: str, kind: str, path: str, detail: str = "", status: int | None = None
    ) -> None:
        self.resource, self.kind, self.path, self.detail = resource, kind, path, detail
        self.status = status
        super().__init__(f"{resource}: {kind} from GET {path}" + (f" ({detail})" if detail else ""))

"""HTTP access to the CRM: one client per sync, shared by every resource of the sync.

Why not dlt's own REST client: it fetches the pages of a resource one after another, does not log
its retries, adds no jitter to its backoff, and puts the request URL (with the `access_key` it
does not know is secret) into its log lines and error messages. This client reads the same
`CRM_API` config, fetches pages concurrently once the first page has told the total, retries
transient failures with jittered exponential backoff, and builds every message itself from the
path and the non-secret parameters only.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol

import orjson
import requests
from requests.adapters import HTTPAdapter

from crm_assets.api import API_KEY_PARAM

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
AccessKeyLocation = Literal["header", "query"]


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


@dataclass(frozen=True)
class CRMConnection:
    """Where the CRM is and the two secrets it wants. `repr` never shows the secrets."""

    base_url: str
    api_key: str = field(repr=False)
    access_key: str | None = field(default=None, repr=False)
    access_key_name: str = "X-Access-Key"
    access_key_location: AccessKeyLocation = "header"
    api_key_name: str = API_KEY_PARAM  # the query parameter of the config's `api_key` auth

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise CRMConfigError(
                f"CRM_BASE_URL must start with http:// or https://, got {self.base_url!r}"
            )
        if self.access_key_location not in ("header", "query"):
            raise CRMConfigError(
                "CRM_ACCESS_KEY_LOCATION must be 'header' or 'query', "
                f"got {self.access_key_location!r}"
            )

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.api_key, self.access_key) if s)


def _env_number(name: str, default: float, cast: Callable[[str], float] = float) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise CRMConfigError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise CRMConfigError(f"{name} must be greater than zero, got {raw!r}")
    return value


@dataclass(frozen=True)
class RequestPolicy:
    """How hard the client tries. Every bound is an environment variable (see the README)."""

    # Ten attempts: with half of all requests failing transiently, a page still fails only once
    # in a thousand (0.5^10), where six attempts lost one page in 64 and so, on a sync of a few
    # hundred pages, nearly always a resource. Permanent failures are not retried at all.
    max_attempts: int = 10
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    concurrency: int = 8

    @classmethod
    def from_env(cls) -> RequestPolicy:
        d = cls()
        return cls(
            max_attempts=_env_number("CRM_REQUEST_MAX_ATTEMPTS", d.max_attempts, int),
            backoff_base=_env_number("CRM_REQUEST_BACKOFF", d.backoff_base),
            backoff_max=_env_number("CRM_REQUEST_MAX_BACKOFF", d.backoff_max),
            connect_timeout=_env_number("CRM_CONNECT_TIMEOUT", d.connect_timeout),
            read_timeout=_env_number("CRM_REQUEST_TIMEOUT", d.read_timeout),
            concurrency=_env_number("CRM_CONCURRENCY", d.concurrency, int),
        )

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Wait before retry number `attempt` (1-based): exponential, with equal jitter so that
        concurrent workers that failed together do not come back together."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass
class ResourceStats:
    """Counters of one resource's extraction, read by the asset for its metadata."""

    pages: int = 0
    records: int = 0
    retries: int = 0
    total: int | None = None
    failure: CRMError | None = None  # why this resource stopped, as data
    variants: list[str] = field(default_factory=list)
    first_total: int | None = None  # the total the first page gave, before any change
    cursor_start: str | None = None
    cursor_end: str | None = None
    seconds: float = 0.0  # from the first request to the last record of this resource
    null_keys: int = 0
    duplicate_keys: int = 0
    drift: Any = None  # conversion.Drift: the table against its declaration
    column_types: dict[str, Any] | None = None  # warehouse column -> conversion.ColumnType
    filter_refused: str | None = None  # the incremental filter the CRM answered 400 to
    key_chunks: list[Any] = field(default_factory=list, repr=False)


def select_records(body: Any, selector: str) -> Any:
    """What the dotted `data_selector` path points at in a decoded page, or None."""
    data = body
    for part in selector.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _describe(path: str, params: Mapping[str, Any]) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{path}?{query}" if query else path


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _refused(exc: BaseException) -> bool:
    """Whether a connection error means nobody is listening (or the host does not resolve):
    retrying that for minutes only delays the message the user needs."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError):
            return True
        name = type(e).__name__
        if name in ("NameResolutionError",):
            return True
        if isinstance(e, BaseException):
            stack.extend([e.__cause__, e.__context__, getattr(e, "reason", None), *e.args])
    return False


@dataclass
class _Attempt:
    """The outcome of one HTTP attempt, kept free of exception objects: the exceptions of
    requests carry the full URL, secrets included, and must not be chained into ours."""

    body: Any = None
    status: int | None = None
    kind: str = ""
    transient: bool = False
    retry_after: float | None = None


class _RatePacer:
    """Paces every request of a client to the rate the API allows, learnt from its 429s.

    Without pacing, concurrent workers burst past an API's rate limit, and a page that meets a
    429 on every attempt fails the sync. The API does not announce its rate, but while it is
    refusing requests, the requests it still admits arrive at its limit: so a 429 sets the pace
    to the rate admitted over the last second, and between 429s the pace creeps up (1% per
    second, at most +50%) in case the limit was underestimated or has been raised. Before the
    first 429 nothing is paced.

    A 429 can also be a fault that has nothing to do with the rate; a pace learnt from those
    would shrink with every one of them (fewer admitted, lower pace, fewer admitted...). So the
    first pace is learnt from a full second of traffic, and only when 429s are at least a fifth
    of that second's answers; it is learnt again at most once a second, and never below half of
    what it first learnt: a flaky API slows a sync down by at most half, it cannot stall it.
    """

    WINDOW_S = 1.0
    PROBE_PER_S = 0.01
    MAX_PROBE = 0.5
    MIN_RATE = 0.2  # requests/s; a floor so that a pace never stalls the sync
    MIN_REFUSED_SHARE = 0.2  # of the last second's answers, for 429s to mean a rate limit

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rate: float | None = None  # learnt requests/s; None until the first 429
        self._floor = self.MIN_RATE
        self._next_slot = 0.0
        self._started: float | None = None
        self._limited_at = 0.0
        self._admitted: deque[float] = deque()
        self._refused: deque[float] = deque()

    def wait(self) -> None:
        """Block until this request's slot; slots are 1/rate apart across all threads."""
        with self._lock:
            now = time.monotonic()
            if self._started is None:
                self._started = now
            if self.rate is None:
                return
            probe = min(self.MAX_PROBE, self.PROBE_PER_S * (now - self._limited_at))
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / (self.rate * (1.0 + probe))
        if slot > now:
            time.sleep(slot - now)

    def observe(self, status: int | None) -> None:
        """Count an admitted response, or learn the rate from a 429."""
        now = time.monotonic()
        with self._lock:
            admitted, refused = self._admitted, self._refused
            for seen in (admitted, refused):
                while seen and seen[0] < now - self.WINDOW_S:
                    seen.popleft()
            if status is None:
                return
            if status != 429:
                admitted.append(now)
                return
            refused.append(now)
            started = self._started if self._started is not None else now
            if now - started < self.WINDOW_S:
                return  # a first second of traffic is too small a sample to learn a rate from
            if len(refused) < self.MIN_REFUSED_SHARE * (len(admitted) + len(refused)):
                return  # a few 429s among many answers are noise, not a limit being hit
            if self.rate is not None and now - self._limited_at < self.WINDOW_S:
                return
            measured = len(admitted) / self.WINDOW_S
            if self.rate is None:
                self._floor = max(self.MIN_RATE, measured / 2)
            self.rate = max(self._floor, measured)
            self._limited_at = now


class CRMClient:
    """Thread-safe GETs against one CRM with retries; pages of a resource fetched concurrently,
    paced to the API's rate limit once it has answered 429."""

    def __init__(
        self,
        connection: CRMConnection,
        policy: RequestPolicy | None = None,
        log: Log | None = None,
        seed: int | None = None,
    ) -> None:
        self.connection = connection
        self.policy = policy or RequestPolicy()
        self.log: Log = log or logging.getLogger("crm_assets")
        self.stats: dict[str, ResourceStats] = {}
        self._rng = random.Random(seed)
        self._local = threading.local()
        self._pacer = _RatePacer()
        self._pool = ThreadPoolExecutor(self.policy.concurrency, thread_name_prefix="crm-http")
        self._sessions: list[requests.Session] = []

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for session in self._sessions:
            session.close()

    def __enter__(self) -> CRMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request -------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=1))
            session.mount("https://", HTTPAdapter(pool_connections=1, pool_maxsize=1))
            if self.connection.access_key and self.connection.access_key_location == "header":
                session.headers[self.connection.access_key_name] = self.connection.access_key
            self._local.session = session
            self._sessions.append(session)
        return session

    def _attempt(self, url: str, params: dict[str, Any], selector: str | None) -> _Attempt:
        self._pacer.wait()
        try:
            response = self._session().get(
                url,
                params=params,
                timeout=(self.policy.connect_timeout, self.policy.read_timeout),
            )
            content = response.content
        except requests.Timeout:
            return _Attempt(kind="timeout", transient=True)
        except requests.RequestException as exc:
            if _refused(exc):
                return _Attempt(kind="connection refused")
            return _Attempt(kind="connection error", transient=True)
        status = response.status_code
        if status != 200:
            reason = f"HTTP {status} {response.reason or ''}".strip()
            return _Attempt(
                status=status,
                kind=reason,
                transient=status in TRANSIENT_STATUSES,
                retry_after=_retry_after(response),
            )
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            return _Attempt(status=status, kind="malformed page (not JSON)", transient=True)
        if selector:
            data = select_records(body, selector)
            if data is None:
                return _Attempt(
                    status=status, kind=f"malformed page (no '{selector}')", transient=True
                )
            if not isinstance(data, list):
                return _Attempt(
                    status=status,
                    kind=f"malformed page ('{selector}' is not a list)",
                    transient=True,
                )
        return _Attempt(body=body, status=status)

    def get(
        self, resource: str, path: str, params: Mapping[str, Any], selector: str | None = None
    ) -> Any:
        """GET `path` with `params` (never secrets: they are added here), retrying transient
        failures; returns the decoded JSON body or raises `CRMAPIError` with a one-line message."""
        stats = self.stats.setdefault(resource, ResourceStats())
        shown = _describe(path, params)
        send = dict(params)
        send[self.connection.api_key_name] = self.connection.api_key
        if self.connection.access_key and self.connection.access_key_location == "query":
            send[self.connection.access_key_name] = self.connection.access_key
        url = self.connection.base_url.rstrip("/") + path
        attempt = 1
        while True:
            outcome = self._attempt(url, send, selector)
            self._pacer.observe(outcome.status)
            if outcome.body is not None:
                stats.pages += 1
                return outcome.body
            if not outcome.transient or attempt >= self.policy.max_attempts:
                break
            wait = self.policy.backoff(attempt, self._rng)
            if outcome.retry_after is not None:
                # Honour the server's own figure, with a little jitter so workers spread out, but
                # never beyond CRM_REQUEST_MAX_BACKOFF: a server asking for an hour would
                # otherwise hang the run with no bound the user can set.
                # Only this request waits: the pacer slows the others if the 429s are the API's
                # rate limit, and a pause of every worker on each random 429 would stall a sync.
                wait = min(outcome.retry_after, self.policy.backoff_max) * (
                    1 + self._rng.uniform(0, 0.1)
                )
            stats.retries += 1
            self.log.warning(
                f"{resource}: {outcome.kind} on GET {shown}; retry {attempt}/"
                f"{self.policy.max_attempts - 1} in {wait:.2f} s"
            )
            time.sleep(wait)
            attempt += 1
        detail = ""
        if outcome.transient:
            detail = f"gave up after {attempt} attempts"
        elif outcome.status in (401, 403):
            detail = (
                "check CRM_API_KEY"
                if outcome.status == 401
                else ("check CRM_ACCESS_KEY and CRM_ACCESS_KEY_NAME/CRM_ACCESS_KEY_LOCATION")
            )
        elif outcome.kind == "connection refused":
            detail = f"nothing answers at {self.connection.base_url}; check CRM_BASE_URL"
        # Nobody listening is about the host, not the page: the query string would only distract.
        where = path if outcome.kind == "connection refused" else shown
        raise CRMAPIError(resource, outcome.kind, where, detail, outcome.status)

    # -- a whole resource ----------------------------------------------------------------------

    def iter_pages(
        self, resource: str, endpoint: Mapping[str, Any], params: Mapping[str, Any] | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield the record lists of every page of one endpoint of `CRM_API`, in offset order."""
        path = endpoint["path"]
        selector = endpoint.get("data_selector")
        base = {**(endpoint.get("params") or {}), **(params or {})}
        paginator = endpoint.get("paginator")
        stats = self.stats.setdefault(resource, ResourceStats())

        def select(body: Any) -> list[dict[str, Any]]:
            # `get` has checked the selector's path on this body already.
            data = select_records(body, selector) if selector else body
            stats.records += len(data)
            return data

        if paginator is None:
            body = self.get(resource, path, base, selector)
            records = select(body)
            stats.total = stats.first_total = len(records)
            announced = body.get("total") if isinstance(body, dict) else None
            if isinstance(announced, int) and announced > len(records):
                # The config says one page, the API says there is more: load what came, and
                # say plainly that the endpoint needs a paginator in api.py.
                self.log.warning(
                    f"{resource}: GET {path} returned {len(records)} of {announced} records on "
                    "its one page; give this resource a paginator in CRM_API to load the rest"
                )
            yield records
            return
        if paginator.get("type") != "offset":
            raise CRMConfigError(
                f"{resource}: paginator type {paginator.get('type')!r} is not "
                "supported; use 'offset' or none"
            )
        limit = int(paginator.get("limit", 100))
        offset_param = paginator.get("offset_param", "offset")
        limit_param = paginator.get("limit_param", "limit")
        total_path = paginator.get("total_path", "total")

        def page_params(offset: int) -> dict[str, Any]:
            return {**base, offset_param: offset, limit_param: limit}

        def total_of(body: Any) -> int | None:
            value = body.get(total_path) if isinstance(body, dict) and total_path else None
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        first = self.get(resource, path, page_params(0), selector)
        records = select(first)
        total = total_of(first)
        stats.total = stats.first_total = total
        yield records
        if total is None:
            # Without a total the only safe end is an empty page: step by what each page held.
            offset = len(records)
            while records:
                records = select(self.get(resource, path, page_params(offset), selector))
                offset += len(records)
                if records:
                    yield records
            return
        # A server may cap the page below our limit; its first page says by how much.
        step = len(records) if 0 < len(records) < min(limit, total) else limit
        yield from self._fetch_concurrently(
            resource, path, selector, step, total, page_params, select, total_of
        )

    def _fetch_concurrently(
        self,
        resource: str,
        path: str,
        selector: str | None,
        step: int,
        total: int,
        page_params: Callable[[int], dict[str, Any]],
        select: Callable[[Any], list[dict[str, Any]]],
        total_of: Callable[[Any], int | None],
    ) -> Iterator[list[dict]]:
        stats = self.stats[resource]
        window: deque[Future[Any]] = deque()
        next_offset = step
        planned_end = total
        try:
            while True:
                # Pages are yielded in order, so a page waiting out a Retry-After would idle every
                # worker if only `concurrency` pages were queued; a deeper queue keeps them busy
                # (the pool still bounds the requests in flight).
                while next_offset < planned_end and len(window) < 4 * self.policy.concurrency:
                    window.append(
                        self._pool.submit(
                            self.get, resource, path, page_params(next_offset), selector
                        )
                    )
                    next_offset += step
                if not window:
                    return
                body = window.popleft().result()
                # Records added while we page push the total up: fetch the new tail too.
                newer = total_of(body)
                if newer is not None and newer > planned_end:
                    planned_end = newer
                    stats.total = newer
                records = select(body)
                if records:
                    yield records
        finally:
            for future in window:
                future.cancel()

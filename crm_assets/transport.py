"""Transport: sessions, auth, retries and pacing for one CRM, shared by every resource of a sync.

Why not dlt's own REST client for the API contract: it does not log its retries, adds no jitter
to its backoff, and puts the request URL (with the `access_key` it does not know is secret) into
its log lines and error messages. This transport builds every message itself from the path and
the non-secret parameters only. How a resource is paged is paging.py's business; this module
answers one GET at a time per thread, and counts requests and retries per resource.

Requests go through urllib3's connection pools directly, not through `requests`: a page costs
`requests` about 1.1 ms of CPU in its own layers (settings merging, hooks, cookies, URL
preparation) on top of urllib3's 0.35 ms (measured here), and every sync is thousands of pages
decoded by threads that share one GIL. Proxies from the environment and certifi's CA bundle are
honoured as `requests` would honour them.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import certifi
import orjson
import urllib3
from urllib3.exceptions import (
    HTTPError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
)
from urllib3.exceptions import TimeoutError as URLLib3Timeout

from crm_assets.api import API_KEY_PARAM
from crm_assets.errors import CRMAPIError, CRMConfigError, Log

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
AccessKeyLocation = Literal["header", "query"]


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


@dataclass(frozen=True)
class RequestPolicy:
    """How hard the transport tries; set per deployment through `CRMRequestSettings`."""

    # Ten attempts: with half of all requests failing transiently, a page still fails only once
    # in a thousand (0.5^10), where six attempts lost one page in 64 and so, on a sync of a few
    # hundred pages, nearly always a resource. Permanent failures are not retried at all.
    max_attempts: int = 10
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    concurrency: int = 8

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Wait before retry number `attempt` (1-based): exponential, with equal jitter so that
        concurrent workers that failed together do not come back together."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass
class RequestCounters:
    """The transport's counters for one resource."""

    requests: int = 0
    responses: int = 0  # answered with a usable page
    retries: int = 0
    escaped_strings: int = 0  # strings kept with a lone surrogate written as its escape


def select_records(body: Any, selector: str) -> Any:
    """What the dotted `data_selector` path points at in a decoded page, or None when the page
    has no such path. Present and null, it holds no records, as an empty list does: some CRMs
    answer `"data": null` past the end of a listing."""
    data = body
    for part in selector.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return [] if data is None else data


def _describe(path: str, params: Mapping[str, Any]) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{path}?{query}" if query else path


# Digits to "0", "-" kept, every other byte to a space: a page's digit runs, found in one C pass.
_DIGIT_RUNS = bytes(48 if 48 <= b <= 57 else b if b == 45 else 32 for b in range(256))
# orjson reads integers from -2^63 to 2^64-1 exactly; past them it needs 20 digits, or 19 and
# a minus sign.
_PAST_64_BITS = (b"0" * 20, b"-" + b"0" * 19)


# The JSON escape of a UTF-16 surrogate (\ud800 to \udfff): where a page has none, orjson's
# refusal is not about a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# A surrogate left in a decoded string: one without its pair (JSON's decoder joins the pairs).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def decode_page(data: bytes) -> tuple[Any, int]:
    """A page's JSON, and how many of its strings held a lone surrogate.

    orjson, except for a page that may hold an integer beyond 64 bits: orjson turns those into
    floats without a word (10**25 + 1 into 1e25, so distinct ids into one), where Python's json
    keeps every digit. Only a page with a digit run that long is decoded the slow way (19-digit
    ids, as snowflake ids are, stay on orjson); the check takes about a third of orjson's own
    time on a page (measured here, 65 KB pages).

    A string escape of half a UTF-16 pair without the other half (`"\\ud83d"`: what JavaScript
    writes for a string cut inside an emoji) is valid JSON that orjson refuses and that UTF-8,
    so no warehouse, can store. Such a page is decoded with json and each such string keeps the
    surrogate as its escape text, six characters (see `escape_lone_surrogates`). Anything else
    that is not JSON (NaN included) raises ValueError."""
    runs = data.translate(_DIGIT_RUNS)
    if not any(run in runs for run in _PAST_64_BITS):
        try:
            return orjson.loads(data), 0
        except orjson.JSONDecodeError:
            if not _SURROGATE_ESCAPE.search(data):
                raise
    body = json.loads(data, parse_constant=_not_json)
    if _SURROGATE_ESCAPE.search(data):
        return escape_lone_surrogates(body)
    return body, 0


_NOT_A_JSON_NUMBER = re.compile(rb"-?(?:NaN|Infinity)")


def _not_json_reason(exc: ValueError, data: bytes) -> str:
    """Why a page is not JSON, in a few words: the decoder's reason and where (line, column),
    never the page's text; `NaN` or `Infinity` by name, as Python's json writes them by default
    and a decoder only calls them an unexpected character."""
    pos = getattr(exc, "pos", None)
    if isinstance(pos, int):
        # orjson points past the minus of -Infinity
        for start in (max(0, pos - 1), pos):
            if literal := _NOT_A_JSON_NUMBER.match(data, start):
                where = literal.start()
                return f"{literal.group().decode()} at char {where}, a number JSON does not have"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _not_json(literal: str) -> Any:
    # As orjson: NaN and Infinity are not JSON, whichever decoder reads the page.
    raise ValueError(f"{literal}, a number JSON does not have")


def escape_lone_surrogates(value: Any) -> tuple[Any, int]:
    """`value` (decoded JSON) with each lone surrogate in its strings, keys included, written as
    its JSON escape (`\\ud83d`), and how many strings held one. Kept as text rather than replaced
    by U+FFFD: two ids that differ only in such a half would become one key, and one row."""
    try:
        orjson.dumps(value)  # in C, and refuses a surrogate: a page without one is not walked
        return value, 0
    except orjson.JSONEncodeError:
        pass  # a surrogate, or an integer beyond 64 bits: walked
    escaped = 0

    def walk(item: Any) -> Any:
        nonlocal escaped
        if isinstance(item, str):
            if _LONE_SURROGATE.search(item) is None:
                return item
            escaped += 1
            return item.encode("utf-8", "backslashreplace").decode("utf-8")
        if isinstance(item, list):
            item[:] = [walk(v) for v in item]
        elif isinstance(item, dict):
            pairs = [(walk(k), walk(v)) for k, v in item.items()]
            item.clear()
            item.update(pairs)
        return item

    return walk(value), escaped


def _retry_after(response: urllib3.BaseHTTPResponse) -> float | None:
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
        if isinstance(e, NameResolutionError):
            return True
        if isinstance(e, BaseException):
            stack.extend([e.__cause__, e.__context__, getattr(e, "reason", None), *e.args])
    return False


@dataclass
class _Attempt:
    """The outcome of one HTTP attempt, kept free of exception objects: urllib3's exceptions
    carry the full URL, secrets included, and must not be chained into ours."""

    body: Any = None
    escaped_strings: int = 0
    status: int | None = None
    kind: str = ""
    transient: bool = False
    retry_after: float | None = None


class Abandoned(Exception):
    """Raised instead of a retry of a request whose answer nobody waits for any more."""


USER_AGENT = "crm-assets"
# Retries are the transport's own (logged, jittered, paced); urllib3 only follows redirects.
_NO_RETRIES = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5)


def _url(url: str, params: Mapping[str, Any]) -> str:
    """`url` with `params` in its query string, encoded as `requests` encodes them: a list is
    the parameter repeated, a None value is left out."""
    query = urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
    if not query:
        return url
    return f"{url}{'&' if urlsplit(url).query else '?'}{query}"


def _pool_manager(base_url: str, workers: int) -> urllib3.PoolManager:
    """Connection pools of `workers` connections each, through the proxy the environment names
    for `base_url` (HTTP(S)_PROXY, NO_PROXY), verifying TLS against `REQUESTS_CA_BUNDLE` or
    certifi's bundle, as `requests` does. A thread that finds every connection busy waits for
    one (`block`), so no more than `workers` requests are in flight, whichever threads send
    them (the pager's first page comes from the resource's own thread)."""
    parts = urlsplit(base_url)
    ca_certs = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    options: dict[str, Any] = {
        "maxsize": workers,
        "block": True,
        "ca_certs": ca_certs or certifi.where(),
    }
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return urllib3.ProxyManager(proxy, **options)
    return urllib3.PoolManager(**options)


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


class CRMTransport:
    """Thread-safe GETs against one CRM with retries, paced to the API's rate limit once it has
    answered 429; a pool of workers for whoever wants requests in parallel."""

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
        self.counters: dict[str, RequestCounters] = {}
        self._rng = random.Random(seed)
        self._pacer = _RatePacer()
        self._pool = ThreadPoolExecutor(self.policy.concurrency, thread_name_prefix="crm-http")
        self._http = _pool_manager(connection.base_url, self.policy.concurrency)
        self._headers = urllib3.make_headers(accept_encoding=True, user_agent=USER_AGENT)
        self._retries = _NO_RETRIES
        if connection.access_key and connection.access_key_location == "header":
            self._headers[connection.access_key_name] = connection.access_key
            # urllib3 drops Authorization and cookies when a redirect leads to another host
            # (or scheme, or port), but not a header it cannot know is secret: the access key
            # would go to wherever the CRM, or anything between, redirects. Same-host redirects
            # keep it.
            self._retries = _NO_RETRIES.new(
                remove_headers_on_redirect=urllib3.Retry.DEFAULT_REMOVE_HEADERS_ON_REDIRECT
                | {connection.access_key_name}
            )
        self._timeout = urllib3.Timeout(
            connect=self.policy.connect_timeout, read=self.policy.read_timeout
        )

    def counters_for(self, resource: str) -> RequestCounters:
        return self.counters.setdefault(resource, RequestCounters())

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run `fn(*args)` on the transport's workers (at most `policy.concurrency` at once)."""
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.clear()

    def __enter__(self) -> CRMTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request -------------------------------------------------------------------------

    def _attempt(self, url: str, selector: str | None) -> _Attempt:
        self._pacer.wait()
        try:
            response = self._http.request(
                "GET", url, headers=self._headers, timeout=self._timeout, retries=self._retries
            )
        except HTTPError as exc:  # urllib3's own base: timeouts and MaxRetryError included
            # Refused first: urllib3's NewConnectionError is also a (connect) TimeoutError.
            if _refused(exc):
                return _Attempt(kind="connection refused")
            reason = exc.reason if isinstance(exc, MaxRetryError) else exc
            if isinstance(reason, URLLib3Timeout) and not isinstance(reason, NewConnectionError):
                return _Attempt(kind="timeout", transient=True)
            return _Attempt(kind="connection error", transient=True)
        status = response.status
        if status != 200:
            reason = f"HTTP {status} {response.reason or ''}".strip()
            return _Attempt(
                status=status,
                kind=reason,
                transient=status in TRANSIENT_STATUSES,
                retry_after=_retry_after(response),
            )
        try:
            body, escaped = decode_page(response.data)
        except ValueError as exc:  # orjson's and json's decode errors, bytes that are not UTF-8
            why = _not_json_reason(exc, response.data)
            return _Attempt(status=status, kind=f"malformed page (not JSON: {why})", transient=True)
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
        return _Attempt(body=body, escaped_strings=escaped, status=status)

    def get(
        self,
        resource: str,
        path: str,
        params: Mapping[str, Any],
        selector: str | None = None,
        abandoned: threading.Event | None = None,
    ) -> Any:
        """GET `path` with `params` (never secrets: they are added here), retrying transient
        failures; returns the decoded JSON body or raises `CRMAPIError` with a one-line message.
        Once `abandoned` is set (a page asked for ahead that the read no longer needs), a
        failure is neither retried nor logged: `Abandoned` is raised instead."""
        counters = self.counters_for(resource)
        shown = _describe(path, params)
        send = dict(params)
        send[self.connection.api_key_name] = self.connection.api_key
        if self.connection.access_key and self.connection.access_key_location == "query":
            send[self.connection.access_key_name] = self.connection.access_key
        url = _url(self.connection.base_url.rstrip("/") + path, send)
        attempt = 1  # attempts that count against max_attempts
        sent = 0
        paced_since: float | None = None  # the first 429 with Retry-After of this request
        while True:
            counters.requests += 1
            sent += 1
            outcome = self._attempt(url, selector)
            self._pacer.observe(outcome.status)
            if outcome.body is not None:
                counters.responses += 1
                counters.escaped_strings += outcome.escaped_strings
                return outcome.body
            if not outcome.transient or attempt >= self.policy.max_attempts:
                break
            if abandoned is not None and abandoned.is_set():
                raise Abandoned(resource)
            wait = self.policy.backoff(attempt, self._rng)
            counts = True
            if outcome.retry_after is not None:
                # Honour the server's own figure, with a little jitter so workers spread out, but
                # never beyond CRM_REQUEST_MAX_BACKOFF: a server asking for an hour would
                # otherwise hang the run with no bound the user can set.
                # Only this request waits: the pacer slows the others if the 429s are the API's
                # rate limit, and a pause of every worker on each random 429 would stall a sync.
                wait = min(outcome.retry_after, self.policy.backoff_max) * (
                    1 + self._rng.uniform(0, 0.1)
                )
            if outcome.retry_after is not None and outcome.status == 429:
                # Retry-After says when *a* request may come again, and another worker may take
                # that slot, again and again: against a token bucket with a small burst, one page
                # lost ten such races within a second and failed a sync (measured). A request
                # that is only being paced is retried for CRM_REQUEST_MAX_BACKOFF before those
                # answers count as failed attempts.
                now = time.monotonic()
                paced_since = now if paced_since is None else paced_since
                counts = now - paced_since >= self.policy.backoff_max
            counters.retries += 1
            self.log.warning(
                f"{resource}: {outcome.kind} on GET {shown}; retry {attempt}/"
                f"{self.policy.max_attempts - 1} in {wait:.2f} s"
            )
            if abandoned is None:
                time.sleep(wait)
            elif abandoned.wait(wait):  # woken early: nobody waits for this answer now
                raise Abandoned(resource)
            if counts:
                attempt += 1
        detail = ""
        if outcome.transient:
            detail = f"gave up after {sent} attempts"
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

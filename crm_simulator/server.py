"""CRM API simulator: a real HTTP server that speaks a third-party CRM's REST contract.

Contract
    GET /v1/{customers,contacts,cases,leads,opportunities} (plus collections added with
    ``add_resource``); anything else is 404 ``{"error": "not found"}``.
    Auth: query param ``api_key`` (else 401 ``{"error": "invalid api key"}``), then the access
    key in a header (default ``X-Access-Key``, case-insensitive) or a query param (else 403
    ``{"error": "invalid access key"}``); an access key of None is not checked.
    Paging (all but cases): ``startIndex`` (default 0) and ``limit`` (default 100, silently capped
    at 100); body ``{"data": [...], "total": n, "startIndex": i, "limit": effective_limit}``,
    records in creation order (id order unless ids are UUIDs). Cases come on one page:
    ``{"data": [...], "total": n}``.
    Collections added with ``add_resource(..., paging="link")`` page by link instead:
    ``cursor`` (opaque, from the previous page) and ``limit`` (default 100, capped at 100, 0 is
    a 400); body ``{"data": [...], "next": url}`` where ``url`` is the absolute URL of the next
    page (``http://<host>/v1/<name>?cursor=...``, plus ``limit`` and the filter if the request
    had them, never a secret) or null on the last page; no total. ``paging="none"``: one page,
    ``{"data": [...]}``.
    The incremental filter, ``updated_since`` unless ``filter_param`` names another parameter
    (None: the CRM has none), keeps records with ``updated_at >=`` its ISO-8601 value; paging and
    total apply to the filtered set. Bad parameters give 400 ``{"error": "..."}``. Parameters the
    CRM does not know are ignored, or with ``strict_params`` answered 400
    ``{"error": "unknown query parameter: <name>"}``.
    With ``notes=True``: GET /v1/customers/<customer id>/notes, same auth, answers
    ``{"data": [{"id", "customer_id", "body", "created_at"}, ...]}`` (0-3 notes, oldest first,
    one page, no parameters besides auth), or 404 ``{"error": "not found"}`` when no served
    customer has that id. Ground truth: ``notes()``. Faults reach it under the name "notes".

Data profiles (``profile=``, see ``profiles.py``)
    "declared" serves records as the declared schema has them (integer ids); "crm" serves records
    shaped like a real CRM's (Salesforce-like string ids, undeclared and camelCase fields, numbers
    in text columns, other timestamp forms, more money decimals); "uuid" has UUID ids and a few
    awkward columns. Mutations (update/insert/delete/restore/set_field) work with every id form.

Usage
    with CRMSimulator(counts={"customers": 250}, faults=Faults(rate_503=0.1)) as sim:
        requests.get(f"{sim.base_url}/v1/customers",
                     params={"api_key": "test-api-key"},
                     headers={"X-Access-Key": "test-access-key"})
        sim.records("customers")        # ground truth, exactly as served
        sim.delete_records("customers", 5); sim.update_records("leads", 10)
        sim.requests("customers")       # request log (secrets replaced by "***"); notes
                                        # requests are logged under their own paths

    Console: ``crm-simulator --help`` / ``python -m crm_simulator --help``.

Design notes (why it looks like this)
    * Records are generated once per resource (deterministically, see ``records.py``) and kept
      only as pre-encoded JSON bytes; a page is a ``b",".join`` of a slice. Decoding happens only
      for ``records()`` and mutations.
    * Every response is written with a single ``sendall`` (status line, headers and body together)
      on a TCP_NODELAY socket: ``http.server``'s usual separate header/body sends hit Nagle plus
      delayed ACK and cost ~40 ms per keep-alive request.
    * Nothing is ever logged per request and error bodies never echo request data, because the
      request line carries the api key (and possibly the access key).
    * Faults are drawn from a RNG seeded by ``Faults.seed`` (one draw per request), so a run with
      the same request sequence sees the same faults.
    * The rate limiter is a token bucket (rate ``rate_limit``/s, burst ``rate_burst`` seconds'
      worth of requests, at least one: 0.1 s by default, 1 s like many API gateways). It
      admits a request when at least ``1 - grace`` tokens are there (grace = 10 ms of refill, at
      most half a token), so a client pacing itself at exactly the limit is not punished for
      scheduling jitter; the long-run rate still cannot exceed the limit.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import dataclasses
import hmac
import http
import math
import re
import socket
import socketserver
import sys
import threading
import time
import traceback
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

import orjson

from .faults import FAULT_KINDS, FaultPicker, Faults
from .profiles import PROFILES, IdForm, Profile, make_profile
from .records import (
    BASE_EPOCH,
    DEFAULT_COUNTS,
    END_EPOCH,
    RESOURCES,
    Refs,
    iso,
    note_records,
    parse_timestamp,
    resource_rng,
)

__all__ = ["RESOURCES", "DEFAULT_COUNTS", "PROFILES", "Faults", "RequestLog", "CRMSimulator"]

MAX_LIMIT = 100
PAGING_MODES: tuple[str, ...] = ("offset", "link", "none")
_UNPAGED = frozenset({"cases"})
_NOTES_PREFIX = "/v1/customers/"
_NOTES_SUFFIX = "/notes"
_CURSOR_PREFIX = b"offset:"
# A Host header is echoed into "next" links only when it is a plain host[:port]; anything else
# (or none) falls back to base_url, so a client cannot make the server hand out arbitrary URLs.
_HOST_RE = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_HTTP_FAULTS = {"429": 429, "500": 500, "502": 502, "503": 503, "504": 504}
_FILTER_CACHE_SIZE = 16
_NOT_JSON_BODY = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>Bad Gateway</h1><p>The upstream server returned an invalid response.</p>"
    b"</body></html>"
)


@dataclass(frozen=True)
class RequestLog:
    """One request as the simulator saw it. ``params`` never holds secrets (they read "***")."""

    method: str
    path: str
    params: dict[str, str]
    status: int
    fault: str | None


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    fault: str | None = None
    drop: bool = False
    delay: float = 0.0


def _json_error(
    status: int, message: str, fault: str | None = None, headers: tuple[tuple[str, str], ...] = ()
) -> _Response:
    return _Response(status, orjson.dumps({"error": message}), fault=fault, headers=headers)


def _encode(record: Any) -> bytes:
    # orjson hands back bytes whose allocation keeps its ~4 KB working buffer; copying to an
    # exact-size object cuts memory ~10x for millions of small records (and is faster overall,
    # as malloc can reuse the freed buffer instead of growing the heap).
    return memoryview(orjson.dumps(record)).tobytes()


def _seconds(value: float) -> str:
    """Decimal seconds for Retry-After: "0.05", "1", "0.013" (rounded up to whole ms)."""
    # round() first: 0.05 * 1000 is 50.000000000000007, which ceil would turn into 0.051.
    millis = math.ceil(round(max(0.0, value) * 1000, 6))
    text = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def _id_key(value: Any) -> bytes:
    # Ids are JSON values of any type; their JSON text is hashable and tells 1, "1" and true apart.
    return orjson.dumps(value)


def _served_id(raw: bytes) -> Any:
    rec = orjson.loads(raw)
    return rec.get("id") if isinstance(rec, dict) else None


def _same_id(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


class _Store:
    """One collection: records as JSON bytes, plus parallel lists of updated_at epochs and of
    ordinals (1-based creation order; ascending, so a position is a binary search away)."""

    def __init__(
        self,
        name: str,
        profile: Profile,
        *,
        builtin: bool,
        count: int = 0,
        refs: Refs | None = None,
        paging: str = "offset",
    ) -> None:
        self.name = name
        self.profile = profile
        self.builtin = builtin
        self.paging = paging
        # paged: startIndex/limit offset pages. Cases are offset-style but come on one page,
        # still with a total; link and unpaged collections added later have no total.
        self.paged = paging == "offset" and name not in _UNPAGED
        self.with_total = paging == "offset"
        self.known_params: tuple[str, ...] = (
            ("startIndex", "limit")
            if self.paged
            else ("cursor", "limit")
            if paging == "link"
            else ()
        )
        self.lock = threading.RLock()
        self.encoded: list[bytes] = []
        self.updated: list[float | None] = []
        self.ordinals: array[int] = array("q")
        self.count_at_start = count
        self.next_ordinal = count + 1
        # Built-in collections name records in the profile's id form. Added collections keep
        # the ids they were given; inserts continue integers, or else the profile's string form.
        self.id_form: IdForm | None = profile.id_form(name) if builtin else None
        self.next_int_id: int | None = None
        self.refs = refs
        self.rng = resource_rng(profile.seed, name) if builtin else None
        self.generated = not builtin
        self.update_calls = 0
        self.delete_calls = 0
        # id key -> (ordinal, bytes at deletion), for restore.
        self.deleted: dict[bytes, tuple[int, bytes]] = {}
        # since-epoch -> positions matching updated_at >= since; kept valid on append, dropped
        # on any other mutation.
        self.filter_cache: dict[float, list[int]] = {}

    def ensure(self) -> None:
        with self.lock:
            if self.generated:
                return
            gen = self.profile.generators[self.name]
            rng, refs = self.rng, self.refs
            assert rng is not None and refs is not None
            dumps = _encode
            enc_append = self.encoded.append
            upd_append = self.updated.append
            hi = END_EPOCH - 1
            for ordinal in range(1, self.count_at_start + 1):
                rec, upd = gen(rng, ordinal, BASE_EPOCH, hi, refs)
                enc_append(dumps(rec))
                upd_append(upd)
            self.ordinals = array("q", range(1, self.count_at_start + 1))
            self.generated = True

    def filtered(self, since: float) -> list[int]:
        idx = self.filter_cache.get(since)
        if idx is None:
            idx = [i for i, u in enumerate(self.updated) if u is not None and u >= since]
            if len(self.filter_cache) >= _FILTER_CACHE_SIZE:
                self.filter_cache.pop(next(iter(self.filter_cache)))
            self.filter_cache[since] = idx
        return idx

    def take_ordinal(self) -> int:
        ordinal = self.next_ordinal
        self.next_ordinal += 1
        return ordinal

    def append(self, record: dict[str, Any], ordinal: int) -> None:
        pos = len(self.encoded)
        upd = parse_timestamp(record.get("updated_at"))
        self.encoded.append(_encode(record))
        self.updated.append(upd)
        self.ordinals.append(ordinal)
        if upd is not None:
            for since, idx in self.filter_cache.items():
                if upd >= since:
                    idx.append(pos)

    def replace(self, pos: int, record: dict[str, Any]) -> None:
        self.encoded[pos] = _encode(record)
        self.updated[pos] = parse_timestamp(record.get("updated_at"))
        self.filter_cache.clear()

    def remove(self, positions: list[int]) -> list[tuple[int, bytes]]:
        """Drop the records at these (ascending, distinct) positions; returns (ordinal, bytes)."""
        removed = [(self.ordinals[p], self.encoded[p]) for p in positions]
        if len(positions) < 16:  # a few deletions: memmove beats rebuilding millions of slots
            for p in reversed(positions):
                del self.encoded[p], self.updated[p], self.ordinals[p]
        else:
            keep: list[tuple[int, int]] = []  # [start, end) runs between deleted positions
            prev = 0
            for p in positions:
                if p > prev:
                    keep.append((prev, p))
                prev = p + 1
            keep.append((prev, len(self.encoded)))
            encoded: list[bytes] = []
            updated: list[float | None] = []
            ordinals: array[int] = array("q")
            for a, b in keep:
                encoded.extend(self.encoded[a:b])
                updated.extend(self.updated[a:b])
                ordinals.extend(self.ordinals[a:b])
            self.encoded, self.updated, self.ordinals = encoded, updated, ordinals
        self.filter_cache.clear()
        return removed

    def insert_at_ordinal(self, ordinal: int, record: dict[str, Any]) -> None:
        """Put a record back where its ordinal belongs (restored records keep their place)."""
        pos = bisect.bisect_left(self.ordinals, ordinal)
        self.encoded.insert(pos, _encode(record))
        self.updated.insert(pos, parse_timestamp(record.get("updated_at")))
        self.ordinals.insert(pos, ordinal)
        self.filter_cache.clear()

    def position_of(self, record_id: Any) -> int:
        guess = -1
        if self.id_form is not None:
            ordinal = self.id_form.ordinal(record_id)
            if ordinal is not None:
                guess = bisect.bisect_left(self.ordinals, ordinal)
        elif type(record_id) is int:
            guess = record_id - 1
        if 0 <= guess < len(self.encoded) and _same_id(_served_id(self.encoded[guess]), record_id):
            return guess
        # set_field may have changed ids, and added collections hold any ids: look at them all.
        for pos, raw in enumerate(self.encoded):
            if _same_id(_served_id(raw), record_id):
                return pos
        raise KeyError(f"{self.name}: no record with id {record_id!r}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "crm-simulator"
    disable_nagle_algorithm = True  # StreamRequestHandler.setup sets TCP_NODELAY
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        # Silent on purpose: request lines carry the api key, and per-request output is noise.
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The default echoes the raw request line (with the api key) into an HTML body.
        self.close_connection = True
        try:
            phrase = http.HTTPStatus(code).phrase.lower()
        except ValueError:
            phrase = "error"
        self._write(_json_error(code, phrase), head_only=False)

    def _serve(self) -> None:
        length = self.headers.get("Content-Length")
        if length:
            try:
                self.rfile.read(int(length))  # discard a body so keep-alive stays in sync
            except ValueError:
                self.close_connection = True
        sim = self.server.sim
        delay = sim.latency_ms / 1000.0
        if delay > 0:
            time.sleep(delay)
        resp = sim._dispatch(self.command, self.path, self.headers)
        if resp.delay > 0:
            time.sleep(resp.delay)
        self._write(resp, head_only=self.command == "HEAD")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _serve

    def _write(self, resp: _Response, *, head_only: bool) -> None:
        try:
            phrase = http.HTTPStatus(resp.status).phrase
        except ValueError:
            phrase = "Unknown"
        body = resp.body
        lines = [
            f"HTTP/1.1 {resp.status} {phrase}",
            f"Content-Type: {resp.content_type}",
            f"Content-Length: {len(body)}",
        ]
        lines.extend(f"{k}: {v}" for k, v in resp.headers)
        if resp.drop:
            self.close_connection = True
            body = body[: len(body) // 2]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # One sendall for head and body (see module docstring).
        self.wfile.write(head if head_only else head + body)
        if resp.drop:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # the default 5 drops SYNs when a client pool connects at once

    def __init__(self, address: tuple[str, int], sim: CRMSimulator) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.sim = sim
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def track(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return  # client went away: normal for drop faults and aborted clients
        traceback.print_exc()


@dataclass
class Hold:
    """Page requests held unanswered from `offset` on (see CRMSimulator.hold)."""

    offset: int
    reached: threading.Event = dataclasses.field(default_factory=threading.Event)
    released: threading.Event = dataclasses.field(default_factory=threading.Event)
    held: list[int] = dataclasses.field(default_factory=list)  # the offsets waiting, in arrival


class CRMSimulator:
    """A CRM REST API on a local port, with deterministic data and injectable faults."""

    def __init__(
        self,
        counts: Mapping[str, int] | None = None,
        *,
        api_key: str = "test-api-key",
        access_key: str | None = "test-access-key",
        access_key_name: str = "X-Access-Key",
        access_key_location: str = "header",
        seed: int = 42,
        faults: Faults | None = None,
        latency_ms: float = 0.0,
        rate_limit: float | None = None,
        rate_burst: float = 0.1,
        host: str = "127.0.0.1",
        port: int = 0,
        profile: str = "declared",
        strict_params: bool = False,
        filter_param: str | None = "updated_since",
        notes: bool = False,
    ) -> None:
        if access_key_location not in ("header", "query"):
            raise ValueError("access_key_location must be 'header' or 'query'")
        if filter_param is not None and (
            not filter_param
            or filter_param in ("api_key", "startIndex", "limit", "cursor")
            or (access_key_location == "query" and filter_param == access_key_name)
        ):
            raise ValueError(f"filter_param {filter_param!r} is empty or names another parameter")
        merged = dict(DEFAULT_COUNTS)
        for name, n in (counts or {}).items():
            if name not in DEFAULT_COUNTS:
                raise ValueError(f"unknown resource {name!r}; expected one of {RESOURCES}")
            if int(n) < 0:
                raise ValueError(f"count for {name} must be >= 0")
            merged[name] = int(n)
        self._counts = merged
        self._api_key = api_key
        self._access_key = access_key
        self.access_key_name = access_key_name
        self.access_key_location = access_key_location
        self.seed = seed
        self._profile = make_profile(profile, seed)
        # Read on every request, so both may change while serving.
        self.strict_params = strict_params
        self.filter_param = filter_param
        self._faults = faults if faults is not None else Faults()
        self.latency_ms = latency_ms
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self.host = host
        self.port = port
        self.base_url = ""

        refs = self._profile.refs(merged["customers"], merged["contacts"])
        self._stores: dict[str, _Store] = {
            name: _Store(name, self._profile, builtin=True, count=merged[name], refs=refs)
            for name in RESOURCES
        }
        self._lock = threading.Lock()  # log, fault picker, counters, bucket, clock
        self._log: list[RequestLog] = []
        self._picker: FaultPicker | None = None
        self._empty_pages: tuple[Faults | None, int] = (None, 0)
        self._injected: dict[str, int] = {}
        self._reset_counters()
        self._clock = END_EPOCH  # logical "now": after every generated updated_at
        self._bucket_rate: float | None = None
        self._tokens = 0.0
        self._bucket_at = 0.0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # Customer notes (GET /v1/customers/<id>/notes): off by default so that a simulator
        # without them answers, and counts requests, exactly as before they existed.
        self._notes_on = bool(notes)
        self._notes_lock = threading.Lock()
        # customer id key -> that customer's notes as JSON bytes; built once, see _notes_index.
        self._notes_by_customer: dict[bytes, list[bytes]] | None = None
        self._holds: dict[str, Hold] = {}

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> CRMSimulator:
        """Generate the data (if not yet) and serve it from a background thread."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        # Bind before generating: a busy port should fail at once, not after seconds of work.
        # Connections made meanwhile wait in the listen backlog.
        server = _Server((self.host, self.port), self)
        try:
            for store in list(self._stores.values()):
                store.ensure()
            if self._notes_on:
                self._notes_index()
        except BaseException:
            server.server_close()
            raise
        self._server = server
        self.port = server.server_address[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.base_url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"crm-simulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open keep-alive connections. Safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        self.release()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> CRMSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- configuration ------------------------------------------------------------------------
    def hold(self, resource: str, from_offset: int) -> Hold:
        """From now on, requests for pages of `resource` at `startIndex` >= `from_offset` get no
        answer until `release()`: a client stopped at a known point of its read, to be killed
        there. The returned hold's `reached` event is set when the first such request arrives."""
        self._store(resource)  # KeyError for an unknown resource
        hold = Hold(from_offset)
        self._holds[resource] = hold
        return hold

    def release(self) -> None:
        """Answer every held request, and hold no more."""
        holds, self._holds = self._holds, {}
        for hold in holds.values():
            hold.released.set()

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, value: Faults | None) -> None:
        self._faults = value if value is not None else Faults()

    @property
    def profile(self) -> str:
        """The data profile's name (see ``profiles.py``)."""
        return self._profile.name

    @property
    def counts(self) -> dict[str, int]:
        """Current record count of every served collection."""
        return {name: self.count(name) for name in self._stores}

    # --- ground truth and inspection ----------------------------------------------------------
    def _store(self, resource: str) -> _Store:
        try:
            store = self._stores[resource]
        except KeyError:
            raise KeyError(f"unknown resource {resource!r}") from None
        store.ensure()
        return store

    def records(self, resource: str) -> list[dict[str, Any]]:
        """The current records, decoded from exactly the bytes that are served."""
        store = self._store(resource)
        with store.lock:
            raw = list(store.encoded)
        return [orjson.loads(b) for b in raw]

    def count(self, resource: str) -> int:
        store = self._store(resource)
        with store.lock:
            return len(store.encoded)

    def ids(self, resource: str) -> list[Any]:
        """The ids of the current records, in served order (decoded, like ``records``)."""
        store = self._store(resource)
        with store.lock:
            raw = list(store.encoded)
        return [_served_id(b) for b in raw]

    def position_of(self, resource: str, record_id: Any) -> int:
        """Where the (first) record with this id is served: its index in ``records()``."""
        store = self._store(resource)
        with store.lock:
            return store.position_of(record_id)

    @property
    def notes_enabled(self) -> bool:
        """Whether GET /v1/customers/<id>/notes is served (``notes=True``)."""
        return self._notes_on

    def notes(self, customer_id: Any = None) -> list[dict[str, Any]]:
        """Customer notes exactly as served: with no argument every note of every served
        customer (customers in served order, each one's notes oldest first); with an id, that
        customer's notes (KeyError if no customer with this id is served, as the API's 404)."""
        if not self._notes_on:
            raise RuntimeError("notes are not served; create the simulator with notes=True")
        index = self._notes_index()
        customers = self._store("customers")
        with customers.lock:
            if customer_id is not None:
                customers.position_of(customer_id)  # KeyError when not served
                raw = index.get(_id_key(customer_id), [])
            else:
                raw = [
                    note
                    for rec in customers.encoded
                    for note in index.get(_id_key(_served_id(rec)), [])
                ]
        return [orjson.loads(b) for b in raw]

    def _notes_index(self) -> dict[bytes, list[bytes]]:
        """Generate the notes once, for the customers served at that moment (start, or the first
        ``notes()`` call): deterministic from the seed, and each note no older than its
        customer. Customers inserted later have none; deleted customers' notes are not served."""
        with self._notes_lock:
            if self._notes_by_customer is not None:
                return self._notes_by_customer
            customers = self._store("customers")
            with customers.lock:
                owners: list[tuple[Any, int]] = []
                for raw in customers.encoded:
                    rec = orjson.loads(raw)
                    rid = rec.get("id") if isinstance(rec, dict) else None
                    # Only ids a URL path can name; bool is an int subclass but no id.
                    if isinstance(rid, str) or type(rid) is int:
                        created = parse_timestamp(rec.get("created_at"))
                        owners.append((rid, BASE_EPOCH if created is None else int(created)))
            rng = resource_rng(self.seed, "customers:notes")
            generated = note_records(rng, owners, self._profile.note_id_form().make)
            index = {_id_key(cid): [_encode(n) for n in notes] for cid, notes in generated}
            self._notes_by_customer = index
            return index

    def _customer_notes(self, ref: str) -> list[bytes] | None:
        """The notes of the served customer a path segment names, None if there is none. The
        segment is text; an integer id is tried first when the text is one (declared ids)."""
        candidates: list[Any] = []
        if ref.isascii() and ref.isdigit() and (ref == "0" or not ref.startswith("0")):
            candidates.append(int(ref))
        candidates.append(ref)
        index = self._notes_index()
        customers = self._store("customers")
        with customers.lock:
            for candidate in candidates:
                try:
                    customers.position_of(candidate)
                except KeyError:
                    continue
                return list(index.get(_id_key(candidate), []))
        return None

    def requests(self, resource: str | None = None) -> list[RequestLog]:
        with self._lock:
            log = list(self._log)
        if resource is None:
            return log
        path = f"/v1/{resource}"
        return [entry for entry in log if entry.path == path]

    def reset_requests(self) -> None:
        """Clear the request log and the faults_injected counters."""
        with self._lock:
            self._log.clear()
            self._reset_counters()

    def faults_injected(self) -> dict[str, int]:
        """Counts since start/reset: every random fault kind ("429", "500", "drop", ...), plus
        "omit_total" (pages sent without total), "inserted" (records added by
        insert_during_paging), "empty_page" (pages sent empty at empty_page_at) and
        "rate_limited" (429s from the rate limiter)."""
        with self._lock:
            return dict(self._injected)

    def _reset_counters(self) -> None:
        self._injected = {kind: 0 for kind, _ in FAULT_KINDS}
        self._injected.update(omit_total=0, inserted=0, rate_limited=0, empty_page=0)

    def _empty_page(self, faults: Faults) -> bool:
        """Whether the page at `empty_page_at` comes back empty this time (and count it)."""
        with self._lock:
            owner, served = self._empty_pages
            served = served if owner is faults else 0  # a new Faults starts its own count
            if faults.empty_page_times is not None and served >= faults.empty_page_times:
                return False
            self._empty_pages = (faults, served + 1)
            self._injected["empty_page"] = self._injected.get("empty_page", 0) + 1
            return True

    def _count_fault(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self._injected[kind] = self._injected.get(kind, 0) + n

    # --- mutations ----------------------------------------------------------------------------
    def _tick(self) -> int:
        with self._lock:
            self._clock += 1
            return self._clock

    def _clock_past(self, epoch: float | None) -> None:
        # Keep "now" later than every updated_at, even ones planted by set_field/add_resource.
        if epoch is not None:
            with self._lock:
                self._clock = max(self._clock, math.floor(epoch))

    def update_records(self, resource: str, n: int) -> list[Any]:
        """Change ``n`` records spread over the collection: updated_at becomes the sim clock's
        new "now" and one ordinary field changes. Returns the changed records' ids in served
        order."""
        store = self._store(resource)
        now = self._tick()
        stamp = iso(now)
        with store.lock:
            size = len(store.encoded)
            n = max(0, min(int(n), size))
            store.update_calls += 1
            # A fresh seeded sample per call: deterministic, spread out, and successive calls
            # touch different records.
            picker = resource_rng(self.seed, f"{resource}:update:{store.update_calls}")
            positions = sorted(picker.sample(range(size), n))
            ids: list[Any] = []
            for pos in positions:
                rec = orjson.loads(store.encoded[pos])
                self._profile.change_one_field(resource, rec, store.update_calls)
                if "updated_at" in rec or store.builtin:
                    rec["updated_at"] = stamp
                store.replace(pos, rec)
                ids.append(rec.get("id"))
        return ids

    def insert_records(self, resource: str, n: int) -> list[Any]:
        """Append ``n`` new records; their ids continue the collection's id form after every id
        given out so far (deleted ones included), so they are new."""
        store = self._store(resource)
        if n <= 0:
            return []
        now = self._tick()
        return self._insert(store, int(n), now)

    def _insert(self, store: _Store, n: int, now: int) -> list[Any]:
        # References may reach every customer/contact given out so far, also inserted ones.
        refs = self._profile.refs(
            self._stores["customers"].next_ordinal - 1, self._stores["contacts"].next_ordinal - 1
        )
        ids: list[Any] = []
        with store.lock:
            taken: set[bytes] | None = None
            for _ in range(n):
                ordinal = store.take_ordinal()
                if store.builtin:
                    assert store.rng is not None
                    gen = self._profile.generators[store.name]
                    rec, _upd = gen(store.rng, ordinal, now, now, refs)
                    rid = rec["id"]
                else:
                    if store.next_int_id is not None:
                        rid = store.next_int_id
                        store.next_int_id += 1
                    else:
                        # String ids given by the caller might use the same form: skip those.
                        if taken is None:
                            taken = {_id_key(_served_id(b)) for b in store.encoded}
                            taken.update(store.deleted)
                        form = self._profile.id_form(store.name)
                        rid = form.make(ordinal)
                        while _id_key(rid) in taken:
                            ordinal = store.take_ordinal()
                            rid = form.make(ordinal)
                        taken.add(_id_key(rid))
                    rec = _clone_for_insert(store, rid, now)
                store.append(rec, ordinal)
                ids.append(rid)
        return ids

    def delete_records(self, resource: str, n_or_ids: int | Iterable[Any]) -> list[Any]:
        """Delete records: an int deletes that many, spread over the collection (seeded, like
        ``update_records``); otherwise the records with these ids (KeyError, and nothing
        deleted, if one is not served). They are no longer served and totals shrink; their
        ids are never given out again. Returns the deleted ids in served order."""
        if isinstance(n_or_ids, str | bytes):
            raise TypeError("delete_records takes a count or a list of ids, not one id")
        store = self._store(resource)
        with store.lock:
            if isinstance(n_or_ids, int) and not isinstance(n_or_ids, bool):
                size = len(store.encoded)
                n = max(0, min(n_or_ids, size))
                store.delete_calls += 1
                picker = resource_rng(self.seed, f"{resource}:delete:{store.delete_calls}")
                positions = sorted(picker.sample(range(size), n))
            else:
                positions = sorted({store.position_of(rid) for rid in n_or_ids})
            removed = store.remove(positions)
            ids: list[Any] = []
            for ordinal, raw in removed:
                rid = _served_id(raw)
                store.deleted[_id_key(rid)] = (ordinal, raw)
                ids.append(rid)
        return ids

    def restore_records(self, resource: str, ids: Iterable[Any]) -> list[Any]:
        """Re-create deleted records: same id, same place in served order, same fields except
        updated_at, which becomes the sim clock's new "now" (so incremental syncs see them).
        KeyError, and nothing restored, if an id is not a deleted record's."""
        if isinstance(ids, str | bytes):
            raise TypeError("restore_records takes a list of ids, not one id")
        store = self._store(resource)
        wanted = list(ids)
        with store.lock:
            keys = [_id_key(rid) for rid in wanted]
            for rid, key in zip(wanted, keys, strict=True):
                if key not in store.deleted:
                    raise KeyError(f"{resource}: no deleted record with id {rid!r}")
            if len(set(keys)) != len(keys):
                raise ValueError("restore_records: an id is given twice")
            stamp = iso(self._tick())
            for key in keys:
                ordinal, raw = store.deleted.pop(key)
                rec = orjson.loads(raw)
                if "updated_at" in rec or store.builtin:
                    rec["updated_at"] = stamp
                store.insert_at_ordinal(ordinal, rec)
        return wanted

    def set_field(self, resource: str, record_id: Any, field: str, value: Any) -> None:
        """Overwrite or add one field of the (first) record with this id; used to serve bad
        data. Setting ``updated_at`` also moves the record in ``updated_since`` filtering."""
        store = self._store(resource)
        with store.lock:
            pos = store.position_of(record_id)
            rec = orjson.loads(store.encoded[pos])
            rec[field] = value
            store.replace(pos, rec)
        if field == "updated_at":
            self._clock_past(parse_timestamp(value))

    def drop_field(self, resource: str, record_id: Any, field: str) -> None:
        """Serve the (first) record with this id without ``field``, as a CRM that leaves out a
        field it has no value for, or that names it otherwise."""
        store = self._store(resource)
        with store.lock:
            pos = store.position_of(record_id)
            rec = orjson.loads(store.encoded[pos])
            rec.pop(field, None)
            store.replace(pos, rec)

    def add_resource(
        self, name: str, records: list[dict[str, Any]], paging: str = "offset"
    ) -> None:
        """Serve ``records`` (in the given order) at ``/v1/<name>``. Replaces a collection of
        the same name. ``paging``: "offset" pages like the built-in collections; "link" answers
        ``{"data": [...], "next": <absolute URL of the next page> | null}`` (``cursor`` and
        ``limit`` parameters, no total); "none" answers ``{"data": [every record]}``."""
        if not name or "/" in name or "?" in name:
            raise ValueError(f"invalid resource name {name!r}")
        if paging not in PAGING_MODES:
            raise ValueError(f"paging must be one of {', '.join(PAGING_MODES)}, not {paging!r}")
        store = _Store(name, self._profile, builtin=False, paging=paging)
        ids = [r.get("id") for r in records if r.get("id") is not None]
        if all(type(i) is int for i in ids):
            store.next_int_id = max(ids, default=0) + 1
        for rec in records:
            store.append(rec, store.take_ordinal())
        self._clock_past(max((u for u in store.updated if u is not None), default=None))
        self._stores[name] = store

    # --- request handling ---------------------------------------------------------------------
    def _dispatch(self, method: str, target: str, headers: Any) -> _Response:
        path, _, query = target.partition("?")
        params: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            params.setdefault(key, value)  # first value wins
        try:
            resp = self._route(method, path, params, headers)
        except Exception:
            traceback.print_exc()
            resp = _json_error(500, "internal simulator error")
        self._record(method, path, params, resp)
        return resp

    def _record(self, method: str, path: str, params: dict[str, str], resp: _Response) -> None:
        secrets = [s for s in (self._api_key, self._access_key) if s]
        clean: dict[str, str] = {}
        for k, v in params.items():
            hidden = k in ("api_key", self.access_key_name) or v in secrets
            # A secret can also arrive as a parameter's name (a client that put it there).
            name = "***" if any(s in k for s in secrets) else k
            clean[name] = "***" if hidden else v
        entry = RequestLog(method, path, clean, resp.status, resp.fault)
        with self._lock:
            self._log.append(entry)

    def _route(self, method: str, path: str, params: dict[str, str], headers: Any) -> _Response:
        store = self._stores.get(path[4:]) if path.startswith("/v1/") else None
        customer_ref = self._notes_target(path) if store is None else None
        if (store is None and customer_ref is None) or method not in ("GET", "HEAD"):
            return _json_error(404, "not found")
        if not _same(params.get("api_key"), self._api_key):
            return _json_error(401, "invalid api key")
        if self._access_key is not None:
            if self.access_key_location == "query":
                given = params.get(self.access_key_name)
            else:
                given = headers.get(self.access_key_name)  # email.message: case-insensitive
            if not _same(given, self._access_key):
                return _json_error(403, "invalid access key")
        limited = self._rate_limited()
        if limited is not None:
            return limited
        if customer_ref is not None:
            return self._serve_notes(customer_ref, params)
        assert store is not None
        return self._serve_collection(store, params, headers)

    def _notes_target(self, path: str) -> str | None:
        """The customer id in ``/v1/customers/<id>/notes`` (percent-decoded), when notes are on."""
        if not (self._notes_on and path.startswith(_NOTES_PREFIX) and path.endswith(_NOTES_SUFFIX)):
            return None
        ref = path[len(_NOTES_PREFIX) : len(path) - len(_NOTES_SUFFIX)]
        if not ref or "/" in ref:
            return None
        return unquote(ref)

    def _rate_limited(self) -> _Response | None:
        rate = self.rate_limit
        if not rate or rate <= 0:
            return None
        burst = max(1.0, rate * self.rate_burst)
        grace = min(0.5, rate * 0.010)
        with self._lock:
            now = time.monotonic()
            if self._bucket_rate != rate:  # new or changed limit: start with a full bucket
                self._bucket_rate = rate
                self._tokens = burst
            else:
                self._tokens = min(burst, self._tokens + (now - self._bucket_at) * rate)
            self._bucket_at = now
            if self._tokens >= 1.0 - grace:
                self._tokens -= 1.0
                return None
            wait = max(0.01, (1.0 - self._tokens) / rate)
            self._injected["rate_limited"] += 1
        return _json_error(
            429,
            "rate limit exceeded",
            fault="rate_limited",
            headers=(("Retry-After", _seconds(wait)),),
        )

    def _unknown_param(
        self, params: dict[str, str], known: tuple[str, ...], *, filtered: bool
    ) -> str | None:
        """The first query parameter this CRM does not know, for strict mode: besides auth,
        the endpoint's ``known`` ones and, where ``filtered``, the incremental filter."""
        filter_param = self.filter_param if filtered else None
        for name in params:
            if name == "api_key" or (filter_param is not None and name == filter_param):
                continue
            if self.access_key_location == "query" and name == self.access_key_name:
                continue
            if name in known:
                continue
            return name
        return None

    def _strict_error(
        self, params: dict[str, str], known: tuple[str, ...], *, filtered: bool
    ) -> _Response | None:
        if not self.strict_params:
            return None
        unknown = self._unknown_param(params, known, filtered=filtered)
        if unknown is None:
            return None
        # The name only, never a value; and not even the name if a secret is in it
        # (a client that put its key where a parameter name goes).
        secrets = [s for s in (self._api_key, self._access_key) if s]
        shown = "***" if any(s in unknown for s in secrets) else unknown
        return _json_error(400, f"unknown query parameter: {shown}")

    def _pick_fault(self, resource: str) -> tuple[Faults, bool, str | None]:
        """The Faults in force, whether they apply to ``resource``, and this request's random
        fault kind (None for none). One RNG draw per request the faults apply to."""
        faults = self._faults
        applies = faults.applies_to(resource)
        kind: str | None = None
        if applies:
            with self._lock:
                if self._picker is None or self._picker.faults is not faults:
                    self._picker = FaultPicker(faults)
                kind = self._picker.pick()
                if kind is not None:
                    self._injected[kind] += 1
        return faults, applies, kind

    @staticmethod
    def _fault_instead(faults: Faults, kind: str | None) -> _Response | None:
        """The response a fault kind sends instead of the data (HTTP errors, HTML), if any."""
        if kind in _HTTP_FAULTS:
            status = _HTTP_FAULTS[kind]
            extra: tuple[tuple[str, str], ...] = ()
            if status == 429:
                extra = (("Retry-After", _seconds(faults.retry_after)),)
            return _json_error(
                status, http.HTTPStatus(status).phrase.lower(), fault=kind, headers=extra
            )
        if kind == "not_json":
            return _Response(
                200, _NOT_JSON_BODY, content_type="text/html; charset=utf-8", fault=kind
            )
        return None

    def _serve_collection(
        self, store: _Store, params: dict[str, str], headers: Any = None
    ) -> _Response:
        refused = self._strict_error(params, store.known_params, filtered=True)
        if refused is not None:
            return refused
        start, limit = 0, MAX_LIMIT
        link = store.paging == "link"
        if store.paged:
            try:
                start = _non_negative(params, "startIndex", 0)
                limit = min(_non_negative(params, "limit", MAX_LIMIT), MAX_LIMIT)
            except ValueError as exc:
                return _json_error(400, str(exc))
        elif link:
            try:
                start = _read_cursor(params.get("cursor"))
                limit = min(_non_negative(params, "limit", MAX_LIMIT), MAX_LIMIT)
            except ValueError as exc:
                return _json_error(400, str(exc))
            if limit == 0:
                # A zero-record page would link to itself forever.
                return _json_error(400, "limit must be a positive integer")
        hold = self._holds.get(store.name)
        if hold is not None and store.paged and start >= hold.offset:
            hold.held.append(start)
            hold.reached.set()
            hold.released.wait()
        since: float | None = None
        filter_param = self.filter_param
        raw_since = params.get(filter_param) if filter_param is not None else None
        if raw_since is not None:
            # A literal "+" in a query string decodes to a space ("...T00:00:00 00:00").
            since = parse_timestamp(raw_since.replace(" ", "+"))
            if since is None:
                return _json_error(400, f"{filter_param} must be an ISO-8601 timestamp")

        faults, applies, kind = self._pick_fault(store.name)
        instead = self._fault_instead(faults, kind)
        if instead is not None:
            return instead

        windowed = store.paged or link
        with store.lock:
            store.ensure()
            if since is None:
                total = len(store.encoded)
                chunk = store.encoded[start : start + limit] if windowed else store.encoded
            else:
                idx = store.filtered(since)
                total = len(idx)
                enc = store.encoded
                sel = idx[start : start + limit] if windowed else idx
                chunk = [enc[i] for i in sel]
            data = b"[" + b",".join(chunk) + b"]"
        if applies and windowed and faults.empty_page_at == start and self._empty_page(faults):
            data = b"[]"

        omit_total = applies and faults.omit_total and store.with_total
        if kind == "data_not_list":
            data = b'{"message":"temporarily unavailable","items":' + data + b"}"
        parts = [] if kind == "no_data" else [b'"data":' + data]
        if store.with_total and kind != "no_total" and not omit_total:
            parts.append(b'"total":%d' % total)
        if omit_total:
            self._count_fault("omit_total")
        if store.paged:
            parts.append(b'"startIndex":%d,"limit":%d' % (start, limit))
        if link:
            end = start + len(chunk)
            following = (
                self._next_url(store, headers, end, params, since is not None)
                if end < total
                else None
            )
            parts.append(b'"next":' + orjson.dumps(following))
        body = b"{" + b",".join(parts) + b"}"

        if applies and windowed and faults.insert_during_paging > 0:
            n = int(faults.insert_during_paging)
            self._insert(store, n, self._tick())
            self._count_fault("inserted", n)
        return _ok(body, kind, faults)

    def _next_url(
        self, store: _Store, headers: Any, offset: int, params: dict[str, str], filtered: bool
    ) -> str:
        """Absolute URL of the next link page. It repeats the request's limit and filter (a
        client following links sends no other parameters) but never a secret: the client adds
        its own auth to every request."""
        query = {"cursor": _make_cursor(offset)}
        if "limit" in params:
            query["limit"] = str(min(int(params["limit"]), MAX_LIMIT))
        if filtered and self.filter_param is not None:
            # parse_qsl turned an unescaped "+" into a space; send the offset escaped instead.
            query[self.filter_param] = params[self.filter_param].replace(" ", "+")
        host = headers.get("Host") if headers is not None else None
        origin = f"http://{host}" if host and _HOST_RE.fullmatch(host) else self.base_url
        return f"{origin}/v1/{store.name}?{urlencode(query)}"

    def _serve_notes(self, ref: str, params: dict[str, str]) -> _Response:
        refused = self._strict_error(params, (), filtered=False)
        if refused is not None:
            return refused
        notes = self._customer_notes(ref)
        if notes is None:
            return _json_error(404, "not found")
        # Notes have their own fault scope ("notes" in only_resources); errors, HTML, drops,
        # slowness and the data shape faults apply, the total and insert ones have no meaning.
        faults, _applies, kind = self._pick_fault("notes")
        instead = self._fault_instead(faults, kind)
        if instead is not None:
            return instead
        data = b"[" + b",".join(notes) + b"]"
        if kind == "data_not_list":
            data = b'{"message":"temporarily unavailable","items":' + data + b"}"
        body = b"{}" if kind == "no_data" else b'{"data":' + data + b"}"
        return _ok(body, kind, faults)


def _ok(body: bytes, kind: str | None, faults: Faults) -> _Response:
    """A 200 answer, carrying the drop or slowness fault drawn for it, if any."""
    return _Response(
        200,
        body,
        fault=kind,
        drop=kind == "drop",
        delay=float(faults.slow_seconds) if kind == "slow" else 0.0,
    )


def _make_cursor(offset: int) -> str:
    # Opaque to clients; URL-safe base64 without padding needs no escaping in a query string.
    return base64.urlsafe_b64encode(_CURSOR_PREFIX + b"%d" % offset).rstrip(b"=").decode()


def _read_cursor(token: str | None) -> int:
    """The offset a cursor stands for (0 without one); ValueError for anything not ours."""
    if token is None:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:  # binascii.Error, or non-ASCII text
        raise ValueError("invalid cursor") from None
    digits = raw[len(_CURSOR_PREFIX) :]
    if not raw.startswith(_CURSOR_PREFIX) or not digits.isdigit():
        raise ValueError("invalid cursor")
    return int(digits)


def _same(given: str | None, expected: str) -> bool:
    if given is None:
        return False
    # Constant-time compare; encode because compare_digest rejects non-ASCII str.
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _non_negative(params: dict[str, str], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise ValueError(f"{name} must be a non-negative integer")
    return int(raw)


def _clone_for_insert(store: _Store, rid: Any, now: int) -> dict[str, Any]:
    """New record for an add_resource collection: a copy of the last one with a fresh id."""
    template = orjson.loads(store.encoded[-1]) if store.encoded else {}
    rec = dict(template)
    rec["id"] = rid
    stamp = iso(now)
    for key in ("created_at", "updated_at"):
        if key in rec or key == "updated_at":
            rec[key] = stamp
    return rec

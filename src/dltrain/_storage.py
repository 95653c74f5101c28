"""Remote URLs (``s3://``, ``gs://``, ``az://``, any fsspec protocol).

One place that opens a store, retries what is transient, and keeps credentials out of every message.

Credentials and the endpoint come from where the store's own client looks for them (for S3: the standard
``AWS_*`` variables, ``AWS_ENDPOINT_URL`` included, ``~/.aws``, instance roles); ``storage_options`` adds what a
user needs beyond that (``{"endpoint_url": ..., "profile": ...}``) and is passed to fsspec as it is. Nothing here
stores them: a checkpoint or a log holds URLs, never options.

Retries are dltrain's own (the S3 client's are switched off on the filesystems made here, unless the user passed
their own ``config_kwargs``), so that each one is counted and logged: ``retry`` runs an operation up to
``attempts`` times with exponential backoff and jitter on HTTP 5xx, throttling, timeouts and reset connections;
anything else (a missing object, access denied) is raised at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from dltrain.errors import DltrainError

__all__ = ["StorageError", "filesystem", "is_remote", "join", "redact", "retry", "retry_count"]

log = logging.getLogger("dltrain.storage")
T = TypeVar("T")

# webdataset's own schemes (``pipe:``) and plain paths are not fsspec URLs for dltrain; ``file://`` is local.
_URL_RE = re.compile(r"^(?P<protocol>[a-zA-Z][a-zA-Z0-9+.-]*)://")
ATTEMPTS = int(os.environ.get("DLTRAIN_STORAGE_ATTEMPTS", "6"))  # 1 try + 5 retries
BACKOFF_S = float(os.environ.get("DLTRAIN_STORAGE_BACKOFF", "0.2"))  # first wait; doubles up to BACKOFF_MAX_S
BACKOFF_MAX_S = 10.0
CONNECTIONS = int(os.environ.get("DLTRAIN_STORAGE_CONNECTIONS", "4"))  # per process: a loader worker is one
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "GOOGLE_APPLICATION_CREDENTIALS",
               "AZURE_STORAGE_KEY", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN")


class StorageError(DltrainError, OSError):
    """A store that did not answer, or refused, after the retries; the message names the URL."""


def protocol_of(path: Any) -> str | None:
    """The URL's protocol (``"s3"``), or None for a local path (``file://`` URLs included)."""
    if not isinstance(path, str):
        return None
    match = _URL_RE.match(path)
    if match is None:
        return None
    protocol = match.group("protocol").lower()
    return None if protocol in ("file", "local") else protocol


def is_remote(path: Any) -> bool:
    """Whether ``path`` is a URL of a remote store (``s3://b/k``); False for local paths and ``file://`` URLs."""
    return protocol_of(path) is not None


def local_path(path: str | os.PathLike[str]) -> str:
    """A local path for ``path`` (``file:///x`` -> ``/x``)."""
    text = os.fspath(path)
    return text[len("file://"):] if text.startswith("file://") else text


def join(base: str, *names: str) -> str:
    """``base/name/...`` for a URL (never through ``pathlib``, which turns ``s3://`` into ``s3:/``)."""
    out = base.rstrip("/")
    for name in names:
        out = f"{out}/{name.strip('/')}"
    return out


def parent(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0]


def basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """The fsspec filesystem of ``url`` with ``storage_options``.

    fsspec caches one instance per options and process; a forked loader worker gets its own.
    """
    import fsspec

    protocol = protocol_of(url) or "file"
    options = dict(storage_options or {})
    if protocol in ("s3", "s3a") and "config_kwargs" not in options:
        # dltrain retries (counted, logged); botocore's own retries would hide them. A bounded pool of connections
        # per process (each loader worker is one).
        options["config_kwargs"] = {"retries": {"total_max_attempts": 1}, "max_pool_connections": CONNECTIONS}
    if protocol in ("s3", "s3a"):
        # Several processes write the same folders (ranks, runs): a cached listing would be stale.
        options.setdefault("use_listings_cache", False)
        # The parts of one multipart upload in flight at once: no more than the pool has connections (more would
        # wait for one and fail with a connect timeout on a slow store).
        options.setdefault("max_concurrency", CONNECTIONS)
    try:
        fs = fsspec.filesystem(protocol, **options)
    except ImportError as err:
        extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure",
                 "abfss": "azure"}.get(protocol)
        hint = f" (pip install 'dltrain[{extra}]')" if extra else ""
        raise StorageError(f"{redact(url)}: no filesystem for {protocol}:// is installed{hint}: {err}") from err
    if protocol in ("s3", "s3a") and "config_kwargs" not in (storage_options or {}):
        fs.retries = 1  # s3fs's own retry loop, likewise
    return fs


# ---------------------------------------------------------------------- retries
_counts = {"retries": 0}
_counts_lock = threading.Lock()


def retry_count() -> int:
    """Transient errors retried in this process so far."""
    return _counts["retries"]


def is_transient(err: BaseException) -> bool:
    """HTTP 5xx, throttling, timeouts and broken connections.

    Worth another try. Missing objects, denied access, bad requests are not.
    """
    if isinstance(err, FileNotFoundError):
        # s3fs aborts a multipart upload whose part failed; an abort that finds the upload gone raises this, with
        # the part's (transient) error as its context. A plain missing object has none.
        context = err.__context__
        return context is not None and context is not err and is_transient(context)
    if isinstance(err, (PermissionError, IsADirectoryError, NotADirectoryError, StorageError)):
        return False
    if isinstance(err, (TimeoutError, ConnectionError)):
        return True
    text = f"{type(err).__name__}: {err}"
    status = _http_status(err)
    if status is not None:
        return status >= 500 or status in (408, 429)
    names = ("SlowDown", "Throttl", "RequestTimeout", "InternalError", "ServiceUnavailable", "TooManyRequests",
             "IncompleteRead", "ClientPayloadError", "ServerDisconnected", "ConnectionReset", "Connection reset",
             "RemoteDisconnected", "ResponseParserError", "ReadTimeout", "ConnectTimeout", "EndpointConnectionError",
             "Could not connect", "Broken pipe", "ContentLengthError", "Response payload is not completed",
             "HTTPClientError", "ProtocolError", "Not enough data")
    if any(n in text for n in names):
        return True
    cause = err.__cause__ or err.__context__
    return cause is not None and cause is not err and is_transient(cause)


def _http_status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    status = getattr(err, "status", None) or getattr(err, "code", None)
    return status if isinstance(status, int) and 100 <= status < 600 else None


def retry(fn: Callable[[], T], what: str, *, attempts: int | None = None) -> T:
    """``fn()``, tried up to ``attempts`` times while it fails with a transient error (`is_transient`).

    The tries are ``BACKOFF_S * 2**i`` apart (with jitter, at most ``BACKOFF_MAX_S``). Each retry is counted and
    logged.

    Args:
        fn: the operation.
        what: what it acts on (the URL), for the log and the error; redacted there.
        attempts: how many tries in all (default ``ATTEMPTS``, ``DLTRAIN_STORAGE_ATTEMPTS``).

    Raises:
        StorageError: still failing after the last attempt (the message names ``what`` and the last error).
        Exception: the operation's own error, at once, when it is not transient (``FileNotFoundError`` for a
            missing object).
    """
    attempts = ATTEMPTS if attempts is None else attempts
    started = time.monotonic()
    for i in range(attempts):
        try:
            return fn()
        except Exception as err:
            if not is_transient(err):
                raise
            if i == attempts - 1:
                raise StorageError(
                    f"{redact(what)}: the store kept failing: {attempts} attempts over "
                    f"{time.monotonic() - started:.1f} s, last error {type(err).__name__}: {redact(str(err))[:300]}. "
                    "Check that the store is reachable (endpoint, network) and retry; DLTRAIN_STORAGE_ATTEMPTS "
                    "sets the attempts"
                ) from None
            wait = min(BACKOFF_S * 2**i, BACKOFF_MAX_S) * (0.5 + random.random())
            with _counts_lock:
                _counts["retries"] += 1
                total = _counts["retries"]
            log.warning("[dltrain] %s: transient error (%s: %s); retry %d of %d in %.2f s (%d retries in this "
                        "process)", redact(what), type(err).__name__, redact(str(err))[:200], i + 1, attempts - 1,
                        wait, total)
            time.sleep(wait)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------- messages
_USERINFO_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_SIGNED_RE = re.compile(r"(?i)(X-Amz-(?:Credential|Signature|Security-Token)|Signature|sig|AWSAccessKeyId)=[^&\s'\"]+")


def redact(text: str, extra_secrets: Mapping[str, Any] | None = None) -> str:
    """``text`` without credentials.

    ``user:password@`` of URLs, signed query parameters, and the values of the credential variables of the
    environment (and of ``extra_secrets``' string values) wherever they appear.
    """
    text = _USERINFO_RE.sub(r"\g<scheme>***@", str(text))
    text = _SIGNED_RE.sub(r"\1=***", text)
    secrets = [os.environ.get(name, "") for name in _SECRET_ENV]
    secrets += [str(v) for v in (extra_secrets or {}).values() if isinstance(v, str)]
    for secret in secrets:
        if len(secret) >= 8:  # shorter values are not real credentials; replacing them would garble the text
            text = text.replace(secret, "***")
    return text


# ---------------------------------------------------------------------- whole objects
def read_bytes(url: str, storage_options: Mapping[str, Any] | None = None, start: int | None = None,
               end: int | None = None) -> bytes:
    """The object's bytes (``[start, end)`` when given: one ranged GET), retried."""
    fs = filesystem(url, storage_options)
    return retry(lambda: fs.cat_file(url, start=start, end=end), url)


def write_bytes(url: str, data: bytes, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``data`` as the object ``url``, retried as a whole.

    On an object store (S3, GCS, Azure Blob) the new object becomes visible only once complete, replacing any
    old one in one step.
    """
    fs = filesystem(url, storage_options)
    retry(lambda: fs.pipe_file(url, data), url)


def create(url: str, data: bytes, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Write ``data`` as the object ``url`` only if there is none; True when this call created it.

    S3's conditional PUT (``If-None-Match: *``): of two writers at the same moment one wins. Stores without
    conditional writes: a check, then a write (two writers at the same moment may both succeed).
    """
    fs = filesystem(url, storage_options)

    def put() -> bool:
        if protocol_of(url) in ("s3", "s3a"):
            try:
                fs.pipe_file(url, data, mode="create")
            except FileExistsError:  # s3fs's translation of 412 PreconditionFailed
                return False
            return True
        fs.invalidate_cache(parent(url))
        if fs.exists(url):
            return False
        fs.pipe_file(url, data)
        return True

    return retry(put, url)


def exists(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    fs = filesystem(url, storage_options)

    def check() -> bool:
        fs.invalidate_cache(parent(url))
        return bool(fs.exists(url))

    return retry(check, url)


def listing(url: str, storage_options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Entries directly under ``url`` (fsspec's ``ls(detail=True)``, fresh: no cached listing); [] if none."""
    fs = filesystem(url, storage_options)

    def ls() -> list[dict[str, Any]]:
        fs.invalidate_cache(url)
        try:
            return list(fs.ls(url, detail=True))
        except FileNotFoundError:
            return []

    return retry(ls, url)


def remove(url: str, storage_options: Mapping[str, Any] | None = None, recursive: bool = False) -> None:
    """Delete the object (or every object under the prefix, ``recursive``); a missing one is fine."""
    fs = filesystem(url, storage_options)

    def rm() -> None:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(url, recursive=recursive)

    retry(rm, url)
    fs.invalidate_cache(parent(url))


def full_url(fs: Any, path: str) -> str:
    """A path from ``fs.ls``/``fs.find`` (no protocol) as a URL."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if _URL_RE.match(path) else f"{protocol}://{path}"

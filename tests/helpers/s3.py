"""A real S3 server for the tests: moto's standalone HTTP server on 127.0.0.1, and a proxy that injects faults.

Fixtures (registered for the whole suite in tests/conftest.py):

- ``s3_server`` (session): moto's ``ThreadedMotoServer`` on a free port of 127.0.0.1.
- ``s3``: the standard ``AWS_*`` variables pointed at it (``AWS_ENDPOINT_URL`` included; child processes inherit
  them) and a fresh bucket; yields an `S3Bucket` (``.url("a/b")`` -> ``s3://<bucket>/a/b``).
- ``s3_faults``: the same, but the variables point at a `FaultProxy` in front of the server; tests tell it which
  requests fail (``proxy.fail(...)``, ``proxy.cut(...)``, ``proxy.down()``).

The secret key is `SECRET`: tests scan what was written and the errors raised for it.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

SECRET = "dltrain-test-secret-Zq8v1K"  # AWS_SECRET_ACCESS_KEY of the test server: must never appear anywhere
ACCESS_KEY = "AKIADLTRAINTEST0001"


class S3Server:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.stop()


def environment(endpoint: str) -> dict[str, str]:
    """The standard variables an S3 client (boto3, s3fs, the AWS CLI) reads."""
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass
class S3Bucket:
    name: str
    endpoint: str
    env: dict[str, str]

    def url(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}".rstrip("/") if key else f"s3://{self.name}"

    @property
    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)

    def objects(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` (fresh listing)."""
        fs = self.fs
        return sorted(p.split("/", 1)[1] for p in fs.find(f"{self.name}/{prefix}"))

    def read(self, key: str) -> bytes:
        return self.fs.cat_file(f"{self.name}/{key}")


def _make_bucket(endpoint: str) -> str:
    import boto3

    name = f"dltrain-{uuid.uuid4().hex[:12]}"
    env = environment(endpoint)
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=SECRET, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def _clear_fsspec_instances() -> None:
    """s3fs filesystems are cached per options and process; one made for another endpoint must not be reused."""
    with contextlib.suppress(ImportError):
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()


# ---------------------------------------------------------------------- fault injection
@dataclass
class Fault:
    kind: str  # "status" (answer with an HTTP status) | "cut" (close the connection in the middle of the body)
    count: int  # how many matching requests it hits (-1: all)
    status: int = 503
    method: str | None = None
    contains: str | None = None  # a substring of the request path
    every: int = 1  # hit one matching request in this many (the others pass)
    seen: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (self.contains is None or self.contains in path)


@dataclass
class FaultProxy:
    """An HTTP proxy in front of the S3 server that answers matching requests with an error or cuts them.

    Faults are consumed in order; ``hits`` counts the requests each kind spoiled.
    """

    upstream: str
    faults: list[Fault] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=lambda: {"status": 0, "cut": 0})
    requests: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        host, port = self.upstream.removeprefix("http://").split(":")
        self._up = (host, int(port))
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._take(self.command, self.path)
                if fault is not None and fault.kind == "status":
                    payload = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>"
                               f"{'SlowDown' if fault.status == 503 else 'InternalError'}</Code><Message>injected"
                               f"</Message></Error>").encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(*proxy._up, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                # HEAD: the length of the object, as the server said (there is no body to measure)
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                if fault is not None and fault.kind == "cut":
                    self.send_header("Connection", "close")
                self.end_headers()
                if fault is not None and fault.kind == "cut" and self.command != "HEAD":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.requests += 1
            for fault in self.faults:
                if fault.count != 0 and fault.matches(method, path):
                    fault.seen += 1
                    if fault.seen % fault.every:
                        continue
                    if fault.count > 0:
                        fault.count -= 1
                    self.hits[fault.kind] += 1
                    return fault
        return None

    def fail(self, count: int, status: int = 503, method: str | None = None, contains: str | None = None,
             every: int = 1) -> None:
        """``count`` matching requests (one in ``every``) are answered with ``status`` (503 SlowDown, 500
        InternalError)."""
        self.faults.append(Fault("status", count, status, method, contains, every))

    def cut(self, count: int, method: str | None = "GET", contains: str | None = None, every: int = 1) -> None:
        """``count`` matching requests (one in ``every``) get their headers and half the body, then the connection
        closes."""
        self.faults.append(Fault("cut", count, 0, method, contains, every))

    def down(self, status: int = 503) -> None:
        """Every request from now on is answered with ``status``: a store that stays down."""
        self.faults.insert(0, Fault("status", -1, status))

    def clear(self) -> None:
        self.faults.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("moto.server", reason="moto[server] (the dev extra) runs the S3 test server")
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    env = environment(s3_server.endpoint)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    _clear_fsspec_instances()
    yield S3Bucket(_make_bucket(s3_server.endpoint), s3_server.endpoint, env)
    _clear_fsspec_instances()


@pytest.fixture
def s3_faults(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[S3Bucket, FaultProxy]]:
    proxy = FaultProxy(s3_server.endpoint)
    env = environment(proxy.endpoint)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DLTRAIN_STORAGE_BACKOFF", "0.01")
    monkeypatch.setattr("dltrain._storage.BACKOFF_S", 0.01)
    _clear_fsspec_instances()
    yield S3Bucket(_make_bucket(s3_server.endpoint), proxy.endpoint, env), proxy
    proxy.stop()
    _clear_fsspec_instances()

"""One small HTTP server: ``/metrics``, ``/healthz`` and ``/readyz`` (stdlib, one thread)."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .._lifecycle import Closeable
from .._version import __version__
from ..errors import TransportError, ValidationError
from .exposition import negotiate
from .registry import Registry


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # Scrapes every few seconds would flood stderr; errors are visible as HTTP statuses.
        pass

    def _send(self, status: int, ctype: str, body: bytes, head: bool = False) -> None:
        if len(body) > 1024 and "gzip" in (self.headers.get("Accept-Encoding") or ""):
            body = gzip.compress(body, compresslevel=1)
            gz = True
        else:
            gz = False
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if gz:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, head: bool) -> None:
        self._send(status, "application/json", json.dumps(obj).encode() + b"\n", head)

    def _route(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        reg = self.server.registry
        if path == "/metrics":
            fmt, ctype = negotiate(self.headers.get("Accept"))
            try:
                body = reg.render(fmt)
            except Exception as exc:  # report, keep serving
                self._json(500, {"error": f"collecting metrics failed: {exc!r}"}, head)
                return
            self._send(200, ctype, body, head)
        elif path == "/healthz":
            self._json(200, {"status": "ok", "version": __version__,
                             "uptime_seconds": round(time.monotonic() - self.server.started, 3)},
                       head)
        elif path == "/readyz":
            ok, objects = reg.readiness()
            self._json(200 if ok else 503,
                       {"status": "ready" if ok else "not ready", "objects": objects}, head)
        else:
            self._json(404, {"error": f"no such path {path!r}; "
                                      "try /metrics, /healthz or /readyz"}, head)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._route(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(head=True)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], registry: Registry) -> None:
        if ":" in addr[0]:  # an IPv6 literal such as "::1"
            self.address_family = socket.AF_INET6
        super().__init__(addr, _Handler)
        self.registry = registry
        self.started = time.monotonic()


class MetricsServer(Closeable):
    """A running metrics server; returned by :func:`serve`. Use as a context manager or call
    :meth:`stop`.

    Attributes
    ----------
    addr : str
        The bound address.
    port : int
        The bound port (the real one when ``serve(0)`` picked a free port).
    url : str
        ``http://addr:port`` (append ``/metrics``, ``/healthz`` or ``/readyz``).
    """

    def __init__(self, server: _Server) -> None:
        self._server = server
        host, port = server.server_address[:2]
        self.addr: str = str(host)
        self.port: int = int(port)
        h = f"[{self.addr}]" if ":" in self.addr else self.addr
        self.url = f"http://{h}:{self.port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name=f"pybus-metrics-{self.port}", daemon=True,
        )
        self._thread.start()
        self._stopped = False

    def stop(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def close(self) -> None:
        """:meth:`stop` (the name every pybus object closes with)."""
        self.stop()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url} {'stopped' if self._stopped else 'running'}>"


def serve(port: int, addr: str = "127.0.0.1", registry: Registry | None = None) -> MetricsServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` from a background thread.

    Parameters
    ----------
    port : int
        TCP port, 0-65535; 0 picks a free port (read it from the handle's ``.port``).
    addr : str
        Address to bind; loopback by default, so nothing is exposed unless asked.
    registry : Registry, optional
        The registry to serve; default :data:`pybus.metrics.default_registry`.

    Returns
    -------
    MetricsServer
        Has ``port``, ``url`` and ``stop()``.

    Raises
    ------
    ValidationError
        ``port`` is not an int in range.
    TransportError
        The address cannot be bound (in use, not local).

    Examples
    --------
    >>> srv = pybus.metrics.serve(0)          # doctest: +SKIP
    >>> srv.url + "/metrics"                  # doctest: +SKIP
    """
    from . import default_registry

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValidationError(f"port must be an int in 0..65535, got {port!r}")
    try:
        srv = _Server((addr, port), registry if registry is not None else default_registry)
    except OSError as exc:
        raise TransportError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") \
            from exc
    return MetricsServer(srv)

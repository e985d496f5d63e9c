"""``/metrics``, ``/healthz`` and ``/readyz`` from one background thread.

``/metrics`` is ``prometheus_client``'s own WSGI app (content negotiation, gzip); the health
endpoints are a small WSGI app beside it, served by ``prometheus_client``'s threading WSGI
server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

from .._lifecycle import Closeable
from .._version import __version__
from ..errors import TransportError, ValidationError
from .collector import exposition_registry
from .registry import Registry

StartResponse = Callable[..., Any]
Response = tuple[str, list[tuple[str, str]], bytes]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # Scrapes every few seconds would flood stderr; errors are visible as HTTP statuses.
        pass


def _json(status: str, obj: Any) -> Response:
    return status, [("Content-Type", "application/json")], json.dumps(obj).encode() + b"\n"


class _App:
    """Routes a request; ``/metrics`` goes to prometheus_client's app over ``registry``."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.started = time.monotonic()
        self._metrics = make_wsgi_app(exposition_registry(registry))

    def _scrape(self, environ: dict[str, Any]) -> Response:
        got: list[Any] = []

        def start(status: str, headers: list[tuple[str, str]], *_: Any) -> None:
            got.extend((status, headers))

        env = dict(environ, REQUEST_METHOD="GET", QUERY_STRING="")  # HEAD: the GET's headers
        try:
            body = b"".join(self._metrics(env, start))
        except Exception as exc:  # report, keep serving
            return _json("500 Internal Server Error",
                         {"error": f"collecting metrics failed: {exc!r}"})
        return got[0], list(got[1]), body

    def _route(self, environ: dict[str, Any]) -> Response:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return self._scrape(environ)
        if path == "/healthz":
            return _json("200 OK", {"status": "ok", "version": __version__,
                                    "uptime_seconds": round(time.monotonic() - self.started, 3)})
        if path == "/readyz":
            ok, objects = self.registry.readiness()
            return _json("200 OK" if ok else "503 Service Unavailable",
                         {"status": "ready" if ok else "not ready", "objects": objects})
        return _json("404 Not Found",
                     {"error": f"no such path {path!r}; try /metrics, /healthz or /readyz"})

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        status, headers, body = self._route(environ)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers += [("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
        start_response(status, headers)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


class _Server(ThreadingWSGIServer):
    daemon_threads = True
    allow_reuse_address = True


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


def _bind(addr: str, port: int, registry: Registry) -> _Server:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET  # an IPv6 literal such as "::1"
    cls = type("_BoundServer", (_Server,), {"address_family": family})
    srv: _Server = cls((addr, port), _QuietHandler)
    srv.set_app(_App(registry))
    return srv


def serve(port: int, addr: str = "127.0.0.1", registry: Registry | None = None) -> MetricsServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` from a background thread.

    ``/metrics`` is written by ``prometheus_client`` (Prometheus text 0.0.4, or OpenMetrics
    when the scraper asks for it; gzip when accepted).

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
        srv = _bind(addr, port, registry if registry is not None else default_registry)
    except OSError as exc:
        raise TransportError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") \
            from exc
    return MetricsServer(srv)

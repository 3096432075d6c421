"""The agent's JSON API: HTTP/1.1 over a unix socket (mode 0600), like Cilium's REST API.

Server side: `serve(socket_path, routes)` with routes {(METHOD, '/v1/path/{param}'): handler};
a handler takes (params, body) and returns a JSON-able object, or raises APIError(status).
params holds the path's {param}s and, under "query", the query string as {name: [values]}.
Client side: `Client(socket_path).get/put/post/delete(path, body)`.

Hostile clients: the socket is 0600 and root's (other users get EACCES at connect). A request
must arrive whole within REQUEST_SECONDS (a silent or byte-a-second client is answered 408 and
cut; each connection has its own thread meanwhile, so the others are served), at most
MAX_CONNECTIONS at once (beyond: 503 at once). Headers over 64 KiB -> 431, a request line over
64 KiB -> 414, a body over 1 MiB -> 413 (unread), a bad request line, Content-Length or JSON
body -> 400, an unknown method -> 501; every error is a JSON {"error": ...}.

Routes the agent registers (agent/daemon.py):
    GET    /v1/healthz                  GET /v1/status
    GET    /v1/endpoint                 GET /v1/endpoint/{id}
    PUT    /v1/endpoint/{container_id}  DELETE /v1/endpoint/{container_id}
    POST   /v1/ipam                     DELETE /v1/ipam/{owner}
    GET    /v1/identity
    GET    /v1/flows?filters            GET /v1/monitor?filters     (agent/monitor/subsystem.py)
"""
from __future__ import annotations

import http
import http.client
import json
import logging
import os
import re
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Callable

from datapath.errors import APIError, AgentUnreachable, DatapathError

log = logging.getLogger("datapath.api")
DEFAULT_SOCKET = "/var/run/datapath/datapath.sock"
Handler = Callable[[dict, object], object]


def _compile(routes: dict[tuple[str, str], Handler]):
    out = []
    for (method, path), fn in routes.items():
        rx = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$")
        out.append((method, rx, fn, path))
    return out


MAX_BODY = 1 << 20            # bytes of request body
MAX_HEADERS = 64 << 10        # bytes of request headers (each line: http.client's 64 KiB too)
REQUEST_SECONDS = 10.0        # to receive one whole request (an idle keep-alive wait included)
MAX_CONNECTIONS = 64          # served at once


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    max_connections = MAX_CONNECTIONS

    def server_activate(self):
        super().server_activate()
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            try:        # refused at once, without a thread: the client is told why
                request.settimeout(0.5)
                request.sendall(_raw_response(503, "too many connections to the agent API"))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], OSError):     # a client that left mid-answer
            log.debug("API client gone: %s", sys.exc_info()[1])
        else:
            log.exception("API connection failed")

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _raw_response(status: int, message: str) -> bytes:
    data = json.dumps({"error": message}).encode()
    reason = http.HTTPStatus(status).phrase
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data


def serve(socket_path: str, routes: dict[tuple[str, str], Handler],
          observe: Callable[[str, str, int, float], None] | None = None,
          request_seconds: float = REQUEST_SECONDS,
          max_connections: int = MAX_CONNECTIONS) -> _Server:
    """Start serving in a background thread; returns the server (call .shutdown()).
    observe(method, route, status, seconds) is called after every request (route: the
    matched route's template, "none" when no route matched). request_seconds and
    max_connections: see the module's docstring (tests make them small)."""
    table = _compile(routes)

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = request_seconds + 5   # each socket read or write (the deadline cuts first)

        def setup(self):
            super().setup()
            self._guard = threading.Lock()
            self._receiving = False

        def handle_one_request(self):
            # the deadline for this request to arrive whole; off once its body is in
            with self._guard:
                self._receiving = True
            timer = threading.Timer(request_seconds, self._too_slow)
            timer.daemon = True
            timer.start()
            try:
                super().handle_one_request()
            finally:
                timer.cancel()
                self._received()

        def _received(self) -> bool:
            """The request is in, the deadline is off (False: the deadline cut it first)."""
            with self._guard:
                ok, self._receiving = self._receiving, False
            return ok

        def _too_slow(self):
            with self._guard:
                if not self._receiving:
                    return
                self._receiving = False
                self.close_connection = True
                log.warning("API client cut: no whole request within %gs", request_seconds)
                for cut in (lambda: self.connection.sendall(_raw_response(
                        408, f"no whole request within {request_seconds:g}s")),
                        lambda: self.connection.shutdown(socket.SHUT_RDWR)):
                    try:
                        cut()
                    except OSError:
                        pass

        def parse_request(self):
            if not super().parse_request():
                return False
            if len(self.headers.as_bytes()) > MAX_HEADERS:
                self.send_error(431, f"request headers over {MAX_HEADERS} bytes")
                return False
            return True

        def send_error(self, code, message=None, explain=None):
            """Every refusal as JSON, BaseHTTPRequestHandler's own too (a malformed request
            line, a line too long, too many headers, an unsupported method), and the
            connection closed after it (the rest of the request is not read)."""
            if not self._received():
                return          # already answered 408 and cut
            self.close_connection = True
            if self.request_version == "HTTP/0.9":      # an unparsable request line
                self.request_version = "HTTP/1.0"       # still gets a status line and headers
            data = json.dumps({"error": message or http.HTTPStatus(code).phrase}).encode()
            try:
                self.send_response(code, message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass

        def _body(self) -> bytes | None:
            """The request's body (None: refused, and the error sent, or cut)."""
            if self.headers.get("Transfer-Encoding"):
                self.send_error(400, "Transfer-Encoding is not supported; send Content-Length")
                return None
            text = (self.headers.get("Content-Length") or "0").strip()
            if not (text.isascii() and text.isdigit()):
                self.send_error(400, f"bad Content-Length {text[:40]!r}")
                return None
            length = int(text)
            if length > MAX_BODY:
                self.send_error(413, f"request body of {length} bytes is over {MAX_BODY}")
                return None
            raw = self.rfile.read(length) if length else b""
            if len(raw) < length or not self._received():
                self.close_connection = True
                return None
            return raw

        def _handle(self, method):
            raw = self._body()
            if raw is None:
                return
            path, _, qs = self.path.partition("?")
            status, out = 404, {"error": f"no route {method} {path}"}
            started, route = time.perf_counter(), "none"
            for m, rx, fn, template in table:
                match = rx.match(path)
                if m == method and match:
                    route = template
                    try:
                        body = json.loads(raw) if raw else None
                        params = {**match.groupdict(), "query": urllib.parse.parse_qs(qs)}
                        status, out = 200, fn(params, body)
                    except APIError as e:
                        status, out = e.status, {"error": str(e)}
                    except DatapathError as e:
                        status, out = 400, {"error": str(e)}
                    except (ValueError, RecursionError) as e:
                        status, out = 400, {"error": f"bad request: {str(e)[:200]}"}
                    except Exception as e:  # a bug must not kill the server thread
                        log.exception("API %s %s failed", method, path)
                        status, out = 500, {"error": f"internal error: {e}"}
                    break
            if observe:
                observe(method, route, status, time.perf_counter() - started)
            data = json.dumps(out).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._handle("GET")

        def do_PUT(self):
            self._handle("PUT")

        def do_POST(self):
            self._handle("POST")

        def do_DELETE(self):
            self._handle("DELETE")

        def address_string(self):
            return "unix"

        def log_message(self, fmt, *args):
            log.debug(fmt, *args)

    os.makedirs(os.path.dirname(socket_path) or ".", exist_ok=True)
    if os.path.exists(socket_path):
        if _alive(socket_path):
            raise APIError(f"another agent is already serving {socket_path}", 409)
        os.unlink(socket_path)
    old = os.umask(0o177)
    try:
        srv = type("Server", (_Server,), {"max_connections": max_connections})(socket_path, H)
    finally:
        os.umask(old)
    os.chmod(socket_path, 0o600)        # root's alone (the agent runs as root)
    threading.Thread(target=srv.serve_forever, name="api", daemon=True).start()
    return srv


def _alive(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def socket_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("DATAPATH_SOCKET") or DEFAULT_SOCKET


class Client:
    def __init__(self, path: str | None = None, timeout: float = 30):
        self.path = socket_path(path)
        self.timeout = timeout

    def request(self, method: str, url: str, body=None):
        conn = _UnixConnection(self.path, self.timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data else {}
            conn.request(method, url, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise AgentUnreachable(self.path, e.strerror or str(e)) from e
        except (socket.timeout, OSError) as e:
            raise AgentUnreachable(self.path, str(e)) from e
        finally:
            conn.close()
        out = json.loads(raw) if raw else None
        if resp.status >= 400:
            msg = out.get("error") if isinstance(out, dict) else raw.decode(errors="replace")
            raise APIError(msg, resp.status)
        return out

    def get(self, url):
        return self.request("GET", url)

    def put(self, url, body):
        return self.request("PUT", url, body)

    def post(self, url, body):
        return self.request("POST", url, body)

    def delete(self, url):
        return self.request("DELETE", url)

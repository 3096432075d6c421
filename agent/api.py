"""The agent's JSON API: HTTP/1.1 over a unix socket (mode 0600), like Cilium's REST API.

Server side: `serve(socket_path, routes)` with routes {(METHOD, '/v1/path/{param}'): handler};
a handler takes (params, body) and returns a JSON-able object, or raises APIError(status).
params holds the path's {param}s and, under "query", the query string as {name: [values]}.
Client side: `Client(socket_path).get/put/post/delete(path, body)`.

Routes the agent registers (agent/daemon.py):
    GET    /v1/healthz                  GET /v1/status
    GET    /v1/endpoint                 GET /v1/endpoint/{id}
    PUT    /v1/endpoint/{container_id}  DELETE /v1/endpoint/{container_id}
    POST   /v1/ipam                     DELETE /v1/ipam/{owner}
    GET    /v1/identity
    GET    /v1/flows?filters            GET /v1/monitor?filters     (agent/monitor/subsystem.py)
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import socketserver
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


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(socket_path: str, routes: dict[tuple[str, str], Handler],
          observe: Callable[[str, str, int, float], None] | None = None) -> _Server:
    """Start serving in a background thread; returns the server (call .shutdown()).
    observe(method, route, status, seconds) is called after every request (route: the
    matched route's template, "none" when no route matched)."""
    table = _compile(routes)

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self, method):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
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
                    except ValueError as e:
                        status, out = 400, {"error": f"bad request: {e}"}
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
        srv = _Server(socket_path, H)
    finally:
        os.umask(old)
    os.chmod(socket_path, 0o600)
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

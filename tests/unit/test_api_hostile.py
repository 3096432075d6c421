"""The agent API against hostile local clients: another user, oversized and malformed requests,
slow and silent clients, too many connections. A real server (agent.api.serve) on a unix socket
of its own; raw sockets for what a well-behaved client would never send."""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time

import pytest

from agent import api

NOBODY = 65534
CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
    s.sendall(b"GET /v1/healthz HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    print(s.recv(4096).split(b"\\r\\n")[0].decode())
except OSError as e:
    print(f"errno {e.errno}")
"""


@pytest.fixture
def server(request):
    """A served API in a directory anyone may enter (so only the socket's own mode decides),
    4 connections at once (a test may ask for more: @pytest.mark.parametrize("server", [n],
    indirect=True))."""
    d = tempfile.mkdtemp(prefix="dp-api-", dir="/tmp")
    os.chmod(d, 0o755)
    path = os.path.join(d, "api.sock")
    routes = {("GET", "/v1/healthz"): lambda p, b: {"ok": True},
              ("PUT", "/v1/thing/{name}"): lambda p, b: {"name": p["name"], "body": b}}
    srv = api.serve(path, routes, request_seconds=1.0,
                    max_connections=getattr(request, "param", 4))
    try:
        yield path
    finally:
        srv.shutdown()
        srv.server_close()
        shutil.rmtree(d, ignore_errors=True)


def raw(path: str, data: bytes, timeout: float = 10) -> tuple[int, dict]:
    """Send data, read the response until the server closes; (status, JSON body)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass            # refused before we finished: the answer is still there to read
        return _response(s)
    finally:
        s.close()


def _response(s: socket.socket) -> tuple[int, dict]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"closed without a response: {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int(dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
                 [b"Content-Length"])
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "closed in the middle of the body"
        body += chunk
    assert b"Content-Type: application/json" in head, head
    return int(head.split()[1]), json.loads(body)


def healthy(path: str) -> bool:
    return api.Client(path, timeout=5).get("/v1/healthz") == {"ok": True}


def as_nobody(path: str) -> str:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           "/usr/bin/python3", "-c", CONNECT, path], capture_output=True,
                          text=True, timeout=30, check=True).stdout.strip()


def test_socket_is_roots_and_another_user_gets_eacces(privileged, server):
    st = os.stat(server)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    assert as_nobody(server) == f"errno {13}"           # EACCES
    os.chmod(server, 0o666)     # the control: the directory let nobody in, the mode kept it out
    try:
        assert as_nobody(server) == "HTTP/1.1 200 OK"
    finally:
        os.chmod(server, 0o600)
    assert as_nobody(server) == "errno 13" and healthy(server)


@pytest.mark.parametrize("data,status", [
    (b"PUT /v1/thing/a HTTP/1.1\r\nContent-Length: 2097152\r\n\r\n{", 413),    # body over 1 MiB
    (b"GET /v1/healthz HTTP/1.1\r\n"
     + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 2048) for i in range(40)) + b"\r\n", 431),
    (b"GET /v1/healthz HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),   # one line
    (b"GET /v1/healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),      # too many
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
], ids=["body", "headers", "header-line", "header-count", "request-line"])
def test_oversized_requests_are_refused(server, data, status):
    got, out = raw(server, data)
    assert got == status and out["error"], out
    assert healthy(server)


@pytest.mark.parametrize("data,status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /v1/healthz HTTP/1.x\r\n\r\n", 400),
    (b"PATCH /v1/thing/a HTTP/1.1\r\n\r\n", 501),
    (b"PUT /v1/thing/a HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
    (b"PUT /v1/thing/a HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
    (b"PUT /v1/thing/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n0\r\n\r\n", 400),
    (b"PUT /v1/thing/a HTTP/1.1\r\nContent-Length: 8\r\n\r\n{\"a\": 1,", 400),
    (b"PUT /v1/thing/a HTTP/1.1\r\nContent-Length: 20000\r\n\r\n" + b"[" * 20000, 400),
    (b"PUT /v1/thing/a HTTP/1.1\r\nContent-Length: 2\r\n\r\n\xff\xfe", 400),
], ids=["request-line", "version", "method", "length-text", "length-negative", "chunked",
        "json", "json-nesting", "json-not-utf8"])
def test_malformed_requests_get_400(server, data, status):
    got, out = raw(server, data)
    assert got == status and out["error"], out
    assert healthy(server)


# Room beside the two slow ones: a closed client's slot is freed when its server thread sees
# the close, which on a loaded machine may come after the next client connects.
@pytest.mark.parametrize("server", [16], indirect=True)
def test_slow_clients_are_cut_and_do_not_hold_up_others(server):
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(server)
    drip = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    drip.connect(server)
    stop = threading.Event()

    def dribble():      # one byte at a time, never a whole request
        for b in b"PUT /v1/thing/a HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + b"x" * 100:
            if stop.wait(0.2):
                return
            try:
                drip.send(bytes([b]))
            except OSError:
                return
    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    try:
        started = time.perf_counter()
        for _ in range(20):     # served while both slow ones hold their connections
            assert healthy(server)
        print(f"20 requests beside two slow clients in {time.perf_counter() - started:.3f}s")
        for s in (silent, drip):    # each is answered 408 and cut (the server closes it)
            s.settimeout(10)
            status, out = _response(s)
            assert status == 408 and "no whole request" in out["error"]
            assert s.recv(100) == b""
    finally:
        stop.set()
        t.join(5)
        silent.close()
        drip.close()


def test_connections_beyond_the_cap_get_503(server):
    held = []
    try:
        for _ in range(4):      # the fixture's cap: 4
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(server)
            held.append(s)
        time.sleep(0.2)         # let the server take them (no request needed)
        status, out = raw(server, b"GET /v1/healthz HTTP/1.1\r\n\r\n")
        assert status == 503 and "too many connections" in out["error"]
        for s in held:          # the silent ones are cut at the deadline...
            s.settimeout(10)
            assert _response(s)[0] == 408
        assert healthy(server)  # ...and their slots are free again
    finally:
        for s in held:
            s.close()

"""A small HTTP server for lab pods, answering like traefik/whoami: the pod's hostname, its
addresses, and the client's address as the server saw it (so tests can check for NAT)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _addresses() -> list[str]:
    p = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True)
    return [line.split()[3].split("/")[0] for line in p.stdout.splitlines() if " inet " in line]


def serve(port: int = 80, host: str = "0.0.0.0") -> None:
    name = os.environ.get("HOSTNAME") or socket.gethostname()
    addrs = _addresses()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"       # keep-alive: one connection, many requests
        # headers and body go out in two writes: without TCP_NODELAY the body waits for the
        # client's delayed ACK (40 ms a request on keep-alive); Go's traefik/whoami sets it too
        disable_nagle_algorithm = True

        def do_GET(self):
            remote = f"{self.client_address[0]}:{self.client_address[1]}"
            if self.path.startswith("/api"):
                body = json.dumps({"hostname": name, "ip": addrs, "remoteAddr": remote}) + "\n"
                ctype = "application/json"
            else:
                lines = [f"Hostname: {name}"] + [f"IP: {a}" for a in addrs]
                lines += [f"RemoteAddr: {remote}", f"{self.command} {self.path} {self.request_version}"]
                lines += [f"{k}: {v}" for k, v in self.headers.items()]
                body = "\n".join(lines) + "\n"
                ctype = "text/plain"
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer((host, port), H).serve_forever()

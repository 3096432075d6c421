"""datapath-cni as a runtime calls it: env + stdin in, JSON out. Hostile input gets the CNI
spec's error codes before anything is allocated: the netconf names an agent socket that does not
exist, so input that got past validation would answer 11 (try again later) instead."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest

from agent.cni import main

CONF = {"cniVersion": "1.0.0", "name": "datapath", "type": "datapath-cni"}


def cni(env: dict, stdin: str | bytes = "{}"):
    """The plugin binary run as a runtime runs it."""
    p = subprocess.run([sys.executable, "-m", "agent.cni"],
                       input=stdin.encode() if isinstance(stdin, str) else stdin,
                       capture_output=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env})
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else None


@pytest.fixture
def run(monkeypatch, capsys):
    """agent.cni.main() in this process (the same code path, without a python start per case)."""
    def call(env: dict, stdin: str | bytes = "{}"):
        for k in [k for k in os.environ if k.startswith("CNI_")]:
            monkeypatch.delenv(k)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        rc = main()
        text = capsys.readouterr().out
        out = json.loads(text) if text.strip() else None
        assert rc == (1 if out and "code" in out else 0), out
        return rc, out
    return call


@pytest.fixture
def conf(tmp_path) -> str:
    return json.dumps({**CONF, "apiSocket": str(tmp_path / "none.sock")})


@pytest.fixture(scope="module")
def pod_netns(privileged):
    """A network namespace that is not ours: a sleeping child's, unshared."""
    p = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        own = os.stat("/proc/self/ns/net").st_ino
        deadline = time.time() + 5
        while os.stat(f"/proc/{p.pid}/ns/net").st_ino == own and time.time() < deadline:
            time.sleep(0.01)
        yield f"/proc/{p.pid}/ns/net"
    finally:
        p.kill()
        p.wait()


def env(command="ADD", cid="c1", ifname="eth0", netns="/proc/self/ns/net", args=None):
    out = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname,
           "CNI_NETNS": netns, "CNI_PATH": "/opt/cni/bin"}
    if args is not None:
        out["CNI_ARGS"] = args
    return out


def test_version():
    rc, out = cni({"CNI_COMMAND": "VERSION"})
    assert rc == 0 and out["cniVersion"] == "1.0.0" and "1.0.0" in out["supportedVersions"]


def test_missing_environment_is_error_code_4():
    rc, out = cni({"CNI_COMMAND": "ADD"}, json.dumps(CONF))
    assert rc == 1 and out["code"] == 4 and "CNI_CONTAINERID" in out["msg"]


def test_unknown_command():
    rc, out = cni({"CNI_COMMAND": "FROB"}, "{}")
    assert rc == 1 and out["code"] == 4


@pytest.mark.parametrize("stdin,code", [
    (b"not json", 6),
    (b'{"cniVersion": "1.0.0", "name": "\xff\xfe"}', 6),              # not UTF-8
    (b"[" * 100000 + b"]" * 100000, 6),                                # nesting bomb
    (json.dumps({**CONF, "pad": "x" * (1 << 20)}).encode(), 6),       # over 1 MiB
    (b"[1, 2]", 7),
    (b'"a string"', 7),
    (json.dumps({**CONF, "cniVersion": "9.9.9"}).encode(), 1),
    (json.dumps({**CONF, "cniVersion": 1}).encode(), 7),
    (json.dumps({**CONF, "name": "../../etc/cni"}).encode(), 7),
    (json.dumps({**CONF, "type": "a/b"}).encode(), 7),
    (json.dumps({**CONF, "mtu": "1500; reboot"}).encode(), 7),
    (json.dumps({**CONF, "mtu": 10}).encode(), 7),
    (json.dumps({**CONF, "apiSocket": "relative.sock"}).encode(), 7),
    (json.dumps({**CONF, "apiSocket": ["/a"]}).encode(), 7),
], ids=["not-json", "not-utf8", "nesting", "over-1MiB", "array", "string", "version",
        "version-type", "name-traversal", "type-slash", "mtu-string", "mtu-small",
        "socket-relative", "socket-type"])
def test_malformed_stdin(run, stdin, code):
    rc, out = run(env(), stdin)
    assert rc == 1 and out["code"] == code, out


@pytest.mark.parametrize("cid", ["../../etc/passwd", "a/b", "c1\nX", "-rf", ".hidden", "c1;ls",
                                 "x" * 256, "ü"])
def test_bad_container_id_is_4(run, conf, cid):
    for command in ("ADD", "CHECK", "DEL"):
        rc, out = run(env(command, cid=cid), conf)
        assert rc == 1 and out["code"] == 4 and "CNI_CONTAINERID" in out["msg"], (command, out)


@pytest.mark.parametrize("ifname", [".", "..", "../eth0", "a/b", "eth0\n", "e th0", "eth0:1",
                                    "a" * 16, "eth\x00"[:3] + "\x01"])
def test_bad_ifname_is_4(run, conf, ifname):
    for command in ("ADD", "CHECK", "DEL"):
        rc, out = run(env(command, ifname=ifname), conf)
        assert rc == 1 and out["code"] == 4 and "CNI_IFNAME" in out["msg"], (command, out)


@pytest.mark.parametrize("args,code", [
    ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web\nK8S_POD_NAMESPACE=kube-system", 4),  # newline
    ("K8S_POD_NAME=web;rm -rf /", 4),                  # ';' inside a value
    ("K8S_POD_NAME=web=1", 4),
    ("K8S_POD_NAME=web;K8S_POD_NAME=other", 4),        # a key given twice
    ("K8S_POD_NAME=../../etc", 4),                     # traversal in the pod name
    ("K8S_POD_NAME=Web", 4),                           # not a DNS-1123 name
    ("K8S_POD_NAME=" + "a" * 254, 4),
    ("K8S_POD_NAMESPACE=kube.system", 4),              # namespace: a DNS-1123 label
    ("K8S_POD_NAME=web;", 4),                          # empty pair
    ("=web", 4),
    ("K8S POD=web", 4),
    ("FOO=bar", 2),                                    # unknown key without IgnoreUnknown
])
def test_bad_cni_args(run, conf, args, code):
    for command in ("ADD", "CHECK", "DEL"):
        rc, out = run(env(command, args=args), conf)
        assert rc == 1 and out["code"] == code and "CNI_ARGS" in out["msg"], (command, out)


def test_netns_must_be_a_foreign_network_namespace(run, conf, tmp_path):
    (tmp_path / "file").write_text("")
    for ns in ("/nonexistent/netns", "relative/netns", str(tmp_path / "file"), str(tmp_path),
               "/proc/self/ns/mnt", "/proc/self/ns/net", "/proc/1/ns/net",
               "/var/run/netns/../../../proc/1/ns/net", ""):
        for command in ("ADD", "CHECK"):
            rc, out = run(env(command, netns=ns), conf)
            assert rc == 1 and out["code"] == 4 and "CNI_NETNS" in out["msg"], (ns, out)


def test_valid_input_gets_through_to_the_agent(conf, pod_netns):
    """The control: well-formed input passes validation and only then finds no agent (11)."""
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1.a;K8S_POD_UID=x-1"
    for command in ("ADD", "CHECK"):
        rc, out = cni(env(command, cid="3f2a_b-c.1", ifname="eth0", netns=pod_netns, args=args),
                      conf)
        assert rc == 1 and out["code"] == 11 and "none.sock" in out["details"], out


def test_del_of_unknown_container_succeeds(run, conf):
    """DEL with nothing to undo and no netns (it may be gone) succeeds, as the spec says."""
    rc, out = run(env("DEL", cid="never-added", netns=""), conf)
    assert (rc, out) == (0, None)
    rc, out = run(env("DEL", cid="never-added", netns="/nonexistent",
                      args="IgnoreUnknown=1;K8S_POD_NAMESPACE=;K8S_POD_NAME="), conf)
    assert (rc, out) == (0, None)

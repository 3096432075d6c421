"""datapath-cni as a runtime calls it: env + stdin in, JSON out (error paths need no root)."""
from __future__ import annotations

import json
import subprocess
import sys


def cni(env: dict, stdin: str = "{}"):
    p = subprocess.run([sys.executable, "-m", "agent.cni"], input=stdin, capture_output=True,
                       text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env})
    return p.returncode, json.loads(p.stdout)


def test_version():
    rc, out = cni({"CNI_COMMAND": "VERSION"})
    assert rc == 0 and out["cniVersion"] == "1.0.0" and "1.0.0" in out["supportedVersions"]


def test_missing_environment_is_error_code_4():
    rc, out = cni({"CNI_COMMAND": "ADD"}, '{"cniVersion": "1.0.0", "name": "n", "type": "t"}')
    assert rc == 1 and out["code"] == 4 and "CNI_CONTAINERID" in out["msg"]


def test_bad_netconf_and_version():
    rc, out = cni({"CNI_COMMAND": "ADD"}, "not json")
    assert rc == 1 and out["code"] == 6
    rc, out = cni({"CNI_COMMAND": "ADD"}, '{"cniVersion": "9.9.9"}')
    assert rc == 1 and out["code"] == 1


def test_unknown_command():
    rc, out = cni({"CNI_COMMAND": "FROB"}, "{}")
    assert rc == 1 and out["code"] == 4


def test_agent_unreachable_is_try_later(tmp_path):
    rc, out = cni({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/self/ns/net",
                   "CNI_IFNAME": "eth0"},
                  json.dumps({"cniVersion": "1.0.0", "apiSocket": str(tmp_path / "none.sock")}))
    assert rc == 1 and out["code"] == 11 and "none.sock" in out["details"]

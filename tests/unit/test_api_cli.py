"""The unix-socket API and the CLI's error behaviour (no root needed)."""
from __future__ import annotations

import os
import stat

import pytest
from click.testing import CliRunner

from agent import api
from agent.cli import cli
from datapath.errors import AgentUnreachable, APIError


@pytest.fixture
def server(tmp_path):
    path = str(tmp_path / "a.sock")

    def boom(p, b):
        raise APIError("nope", 409)

    routes = {("GET", "/v1/healthz"): lambda p, b: {"ok": True},
              ("PUT", "/v1/thing/{name}"): lambda p, b: {"name": p["name"], "body": b},
              ("GET", "/v1/boom"): boom}
    srv = api.serve(path, routes)
    yield path
    srv.shutdown()
    srv.server_close()


def test_socket_is_private_and_round_trips_json(server):
    assert stat.S_IMODE(os.stat(server).st_mode) == 0o600
    c = api.Client(server)
    assert c.get("/v1/healthz") == {"ok": True}
    assert c.put("/v1/thing/x", {"a": [1, 2]}) == {"name": "x", "body": {"a": [1, 2]}}


def test_errors_carry_status(server):
    c = api.Client(server)
    with pytest.raises(APIError) as e:
        c.get("/v1/boom")
    assert e.value.status == 409 and "nope" in str(e.value)
    with pytest.raises(APIError) as e:
        c.get("/v1/missing")
    assert e.value.status == 404


def test_second_server_on_a_live_socket_is_refused(server):
    with pytest.raises(APIError, match="already serving"):
        api.serve(server, {})


def test_unreachable_agent(tmp_path):
    with pytest.raises(AgentUnreachable, match="DATAPATH_SOCKET"):
        api.Client(str(tmp_path / "none.sock")).get("/v1/status")


def test_cli_prints_one_line_and_exits_non_zero_without_agent(tmp_path):
    r = CliRunner().invoke(cli, ["--socket", str(tmp_path / "none.sock"), "status"])
    assert r.exit_code == 1
    assert r.output.count("\n") == 1 and r.output.startswith("Error: cannot reach the agent")


def test_cli_socket_from_environment(tmp_path, server):
    r = CliRunner().invoke(cli, ["endpoint", "list"], env={"DATAPATH_SOCKET": str(tmp_path / "x")})
    assert r.exit_code == 1 and str(tmp_path / "x") in r.output


def test_cli_bad_config_for_cleanup_names_file_and_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("nodeName: n1\nipam: {podCIDR: 10.0.0.0/24}\nbogus: 1\n")
    r = CliRunner().invoke(cli, ["cleanup", "--config", str(cfg)])
    assert r.exit_code == 1
    assert str(cfg) in r.output and "bogus" in r.output and "unknown key" in r.output

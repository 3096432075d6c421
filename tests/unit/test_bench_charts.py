"""bench/charts.py draws: a line chart and a grouped bar chart come out as PNG files (gaps and
missing bars allowed). Files only; nothing about how they look is asserted."""
from __future__ import annotations

from bench import charts

PNG = b"\x89PNG\r\n\x1a\n"


def test_line_chart_writes_a_png(tmp_path):
    p = charts.line_chart(tmp_path / "sub" / "lines.png", "latency vs N", "services", "µs",
                          {"datapath": [(1, 30.0), (1000, 31.0), (10000, 30.5)],
                           "iptables-legacy": [(1, 31.0), (1000, 60.0), (10000, None)]},
                          logx=True)
    assert p.read_bytes().startswith(PNG) and p.stat().st_size > 1000


def test_line_chart_log_y(tmp_path):
    p = charts.line_chart(tmp_path / "logy.png", "t", "x", "y", {"a": [(1, 1), (2, 100)]},
                          logy=True)
    assert p.read_bytes().startswith(PNG)


def test_bar_chart_writes_a_png(tmp_path):
    p = charts.bar_chart(tmp_path / "bars.png", "ns per packet", "ns",
                         {"SYN new flow": {"datapath": 120.0, "katran": 90.0},
                          "ACK established": {"datapath": 60.0},
                          "non-VIP pass": {"datapath": 20.0, "katran": None}})
    assert p.read_bytes().startswith(PNG) and p.stat().st_size > 1000

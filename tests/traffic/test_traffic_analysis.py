"""Gaps, losses and the packets-per-10-ms plot from arrival records."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.traffic.analysis import (
    RESULT_FORMAT,
    analyse,
    flow_arrivals,
    load_result,
    missing_ranges,
    plot_rate,
    rate_histogram,
)
from appliance.traffic.probe import Arrival, TrafficError

pytestmark = pytest.mark.unit

MS = 1_000_000


def stream(seqs: list[int], period_ms: float = 5, start_ns: int = 0) -> list[Arrival]:
    """Probes sent every ``period_ms``, arriving 1 ms later, for the given sequence numbers."""
    return [
        Arrival(s, start_ns + int(s * period_ms * MS), start_ns + int((s * period_ms + 1) * MS))
        for s in seqs
    ]


def test_missing_ranges() -> None:
    assert missing_ranges([0, 1, 5, 6, 9], 12) == [(2, 4), (7, 8), (10, 11)]
    assert missing_ranges([], 3) == [(0, 2)]
    assert missing_ranges([0, 1, 2], 3) == []


def test_analyse_finds_the_failover_gap_and_the_losses() -> None:
    # 200 pps (5 ms); 40 probes (200 ms) lost from seq 100.
    arrivals = stream([s for s in range(300) if not 100 <= s < 140])
    failover_ns = 500 * MS
    summary = analyse(arrivals, failover_ns=failover_ns, sent=305)
    assert summary.received == 260
    assert summary.lost == 45  # the gap and the 5-probe tail
    assert summary.lost_ranges == [(100, 139), (300, 304)]
    assert summary.max_gap_ms == pytest.approx(205.0)
    assert summary.gap_start_ms == pytest.approx(99 * 5 + 1 - 500)
    assert summary.gap_end_ms == pytest.approx(140 * 5 + 1 - 500)
    assert summary.reordered == 0


def test_analyse_without_sent_count_trusts_the_highest_sequence() -> None:
    summary = analyse(stream([0, 2, 1, 3]))
    assert (summary.lost, summary.reordered) == (0, 1)
    assert analyse([]).received == 0


def test_rate_histogram_counts_per_bin() -> None:
    arrivals = stream(list(range(20)), period_ms=2)  # arrivals at 1, 3, ..., 39 ms
    assert rate_histogram(arrivals, 0, 40 * MS) == [5, 5, 5, 5]
    with pytest.raises(TrafficError, match="bin width"):
        rate_histogram(arrivals, 0, 1, bin_ms=0)


def test_plot_rate_writes_a_png(tmp_path: Path) -> None:
    out = plot_rate(
        {"client->server": stream(list(range(100))), "server->client": stream(list(range(50)))},
        tmp_path / "rate.png",
        failover_ns=200 * MS,
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(TrafficError, match="nothing to plot"):
        plot_rate({"a": []}, tmp_path / "empty.png")


def result(mode: str, flow: int, sent: int, received_flow: int, seqs: list[int]) -> dict:
    return {
        "format": RESULT_FORMAT,
        "mode": mode,
        "start_ns": 0,
        "end_ns": 10**9,
        "sent": {"flow": flow, "count": sent, "rate": 200.0, "errors": {}},
        "malformed": 0,
        "received": [
            {"flow": received_flow, "stats": {}, "arrivals": [list(a) for a in stream(seqs)]}
        ],
    }


def test_report_command_combines_both_results(tmp_path: Path) -> None:
    client = tmp_path / "client.json"
    server = tmp_path / "server.json"
    client.write_text(json.dumps(result("send", 1, 100, 2, list(range(90)))))
    server.write_text(json.dumps(result("echo", 2, 90, 1, [s for s in range(100) if s != 7])))
    outcome = CliRunner().invoke(
        app,
        [
            "traffic",
            "report",
            "--client",
            str(client),
            "--server",
            str(server),
            "--json",
            "--failover-at",
            "0.1",
            "--plot",
            str(tmp_path / "p.png"),
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.output)
    assert report["client->server"]["lost"] == 1
    assert report["client->server"]["lost_ranges"] == [[7, 7]]
    assert report["server->client"]["lost"] == 0
    assert (tmp_path / "p.png").stat().st_size > 0


def test_load_result_refuses_other_files(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"format": "something-else"}')
    with pytest.raises(TrafficError, match="not an ipsec-ha/traffic-v1 result"):
        load_result(path)
    path.write_text("{")
    with pytest.raises(TrafficError, match="not JSON"):
        load_result(path)
    with pytest.raises(TrafficError, match="cannot read"):
        load_result(tmp_path / "missing.json")


def test_flow_arrivals_picks_the_flow() -> None:
    data = result("send", 1, 3, 2, [0, 1])
    assert [a.seq for a in flow_arrivals(data, 2)] == [0, 1]
    assert flow_arrivals(data, 9) == []
    data["received"].append({"flow": 3, "arrivals": []})
    with pytest.raises(TrafficError, match="several flows"):
        flow_arrivals(data)

"""send and echo between two network namespaces over a veth: both directions, no loss."""

import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.traffic.analysis import analyse, flow_arrivals, load_result
from appliance.traffic.udp import RunResult, RunSpec, run

pytestmark = pytest.mark.netns

CLIENT_ADDR = "192.0.2.21"
SERVER_ADDR = "192.0.2.22"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def veth_pair() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by one veth, 192.0.2.0/24; always removed."""
    tag = f"iha-{secrets.token_hex(3)}-"
    client, server = tag + "cli", tag + "srv"
    created: list[str] = []
    try:
        for ns in (client, server):
            ip("netns", "add", ns)
            created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip(
            "-n",
            client,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            server,
        )
        ip("-n", client, "addr", "add", f"{CLIENT_ADDR}/24", "dev", "eth0")
        ip("-n", server, "addr", "add", f"{SERVER_ADDR}/24", "dev", "eth0")
        ip("-n", client, "link", "set", "eth0", "up")
        ip("-n", server, "link", "set", "eth0", "up")
        yield client, server
    finally:
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_send_and_echo_carry_both_directions_without_loss(require_root: None) -> None:
    with veth_pair() as (client_ns, server_ns):
        stop_echo = threading.Event()
        bound = threading.Event()
        echo_result: list[RunResult] = []
        echo_error: list[BaseException] = []

        def echo() -> None:
            try:
                echo_result.append(
                    run(
                        RunSpec(
                            mode="echo",
                            bind=(SERVER_ADDR, 0),
                            duration_s=30,
                            rate=200,
                            flow=2,
                            linger_s=0,
                            netns=server_ns,
                        ),
                        stop=stop_echo,
                        ready=lambda endpoint: (ports.append(endpoint[1]), bound.set()),
                    )
                )
            except BaseException as exc:
                echo_error.append(exc)
                bound.set()

        ports: list[int] = []
        thread = threading.Thread(target=echo, daemon=True)
        thread.start()
        assert bound.wait(10) and not echo_error, echo_error
        client = run(
            RunSpec(
                mode="send",
                bind=(CLIENT_ADDR, 0),
                duration_s=2.0,
                peer=(SERVER_ADDR, ports[0]),
                rate=200,
                flow=1,
                linger_s=0.3,
                netns=client_ns,
            )
        )
        stop_echo.set()
        thread.join(10)
        assert not echo_error, echo_error
        server = echo_result[0]

    # client -> server: every probe the client sent arrived, in order.
    forward = server.receiver.flows[1]
    assert client.sent == 400
    assert not client.send_errors
    assert forward.lost_with_sent(client.sent) == 0
    assert (forward.duplicates, forward.reordered) == (0, 0)
    # server -> client: the echo's own stream, for as long as the client listened.
    reverse = client.receiver.flows[2]
    assert server.sent > 0
    # How much of it the client saw depends on scheduling; that it lost none does not.
    assert reverse.received >= 100
    assert reverse.lost == 0
    # The JSON form carries the same records.
    summary = analyse(flow_arrivals(client.to_dict(), 2))
    assert summary.received == reverse.received and summary.lost == 0


def wait_for_udp_listener(netns: str, port: int, process: subprocess.Popen[bytes]) -> None:
    """Until the echo process has bound its port (its start-up takes a while)."""
    for _ in range(300):
        listening = subprocess.run(
            ["ip", "netns", "exec", netns, "ss", "-Hlun", "sport", "=", f":{port}"],
            capture_output=True,
            text=True,
        )
        if listening.stdout.strip():
            return
        if process.poll() is not None:
            break
        threading.Event().wait(0.1)
    pytest.fail(f"the echo process never bound UDP port {port}")


def test_cli_send_and_echo_in_namespaces(require_root: None, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "appliance"]
    with veth_pair() as (client_ns, server_ns):
        echo = subprocess.Popen(
            [
                *cli,
                "traffic",
                "echo",
                "--netns",
                server_ns,
                "--bind",
                f"{SERVER_ADDR}:40950",
                "--duration",
                "30",
                "--rate",
                "200",
                "--json-out",
                str(tmp_path / "server.json"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_udp_listener(server_ns, 40950, echo)
            sent = subprocess.run(
                [
                    *cli,
                    "traffic",
                    "send",
                    "--netns",
                    client_ns,
                    "--to",
                    f"{SERVER_ADDR}:40950",
                    "--bind",
                    CLIENT_ADDR,
                    "--rate",
                    "200",
                    "--duration",
                    "2",
                    "--json",
                    "--json-out",
                    str(tmp_path / "client.json"),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            echo.terminate()
            _out, err = echo.communicate(timeout=30)
        assert sent.returncode == 0, sent.stderr
        assert echo.returncode == 0, err
    summary = json.loads(sent.stdout)
    assert summary["sent"]["count"] == 400
    server = load_result(tmp_path / "server.json")
    client = load_result(tmp_path / "client.json")
    report = subprocess.run(
        [
            *cli,
            "traffic",
            "report",
            "--client",
            str(tmp_path / "client.json"),
            "--server",
            str(tmp_path / "server.json"),
            "--json",
            "--plot",
            str(tmp_path / "rate.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MPLCONFIGDIR": str(tmp_path)},
    )
    assert report.returncode == 0, report.stderr
    directions = json.loads(report.stdout)
    assert directions["client->server"]["lost"] == 0
    assert directions["client->server"]["received"] == 400
    assert directions["server->client"]["received"] > 0
    assert server["mode"] == "echo" and client["mode"] == "send"
    assert (tmp_path / "rate.png").read_bytes()[:4] == b"\x89PNG"


def test_an_xfrm_block_gate_stops_sending_and_is_counted(require_root: None) -> None:
    """The outbound gate of docs/failover.md on the real kernel: a block ``out`` policy
    makes every send fail (counted, not fatal); replacing it lets the flow through."""
    with veth_pair() as (client_ns, server_ns):
        selector = ["src", f"{CLIENT_ADDR}/32", "dst", f"{SERVER_ADDR}/32", "proto", "udp"]
        ip("-n", client_ns, "xfrm", "policy", "add", *selector, "dir", "out", "action", "block")
        listener = threading.Event()
        port: list[int] = []
        results: list[RunResult] = []

        def receive() -> None:
            results.append(
                run(
                    RunSpec(
                        mode="recv",
                        bind=(SERVER_ADDR, 0),
                        duration_s=3.0,
                        linger_s=0,
                        netns=server_ns,
                    ),
                    ready=lambda endpoint: (port.append(endpoint[1]), listener.set()),
                )
            )

        thread = threading.Thread(target=receive, daemon=True)
        thread.start()
        assert listener.wait(10)
        gated = run(
            RunSpec(
                mode="send",
                bind=(CLIENT_ADDR, 0),
                duration_s=0.5,
                peer=(SERVER_ADDR, port[0]),
                rate=200,
                flow=1,
                linger_s=0,
                netns=client_ns,
            )
        )
        ip("-n", client_ns, "xfrm", "policy", "update", *selector, "dir", "out", "action", "allow")
        opened = run(
            RunSpec(
                mode="send",
                bind=(CLIENT_ADDR, 0),
                duration_s=0.5,
                peer=(SERVER_ADDR, port[0]),
                rate=200,
                flow=2,
                linger_s=0,
                netns=client_ns,
            )
        )
        thread.join(10)
    assert gated.sent == 100
    assert gated.send_errors == {"EPERM": 100}
    assert not opened.send_errors
    flows = results[0].receiver.flows
    assert 1 not in flows
    assert flows[2].lost_with_sent(opened.sent) == 0

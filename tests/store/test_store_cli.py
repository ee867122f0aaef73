"""``ipsec-ha store ...`` against a real store server on the loopback (no root needed)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from entries_factory import make_state
from store_process import write_config, write_psk
from typer.testing import CliRunner

from appliance.cli import app
from appliance.model import Snapshot
from appliance.store.client import StoreClient, StoreTimeoutError
from appliance.store.config import load_server_config
from appliance.store.server import serve

pytestmark = pytest.mark.unit


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    psk = tmp_path / "cluster.psk"
    write_psk(psk)
    port = free_udp_port()
    cfg_path = write_config(
        tmp_path / "store.toml", psk, "127.0.0.1", port, "sqlite", tmp_path / "s.db"
    )
    cfg = load_server_config(cfg_path)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: list[asyncio.Future[None]] = []

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(serve(cfg, started))
        await started.wait()
        stop.append(asyncio.get_running_loop().create_future())
        ready.set()
        await stop[0]
        task.cancel()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield cfg_path
    loop.call_soon_threadsafe(stop[0].set_result, None)
    thread.join(10)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_put_get_stats_through_the_cli(config: Path, tmp_path: Path) -> None:
    sad, spd = make_state(25)
    snap = Snapshot("gw1", datetime.datetime.now(datetime.UTC), tuple(sad), tuple(spd))
    snap_file = tmp_path / "snap.json"
    snap_file.write_bytes(snap.to_bytes())

    code, out, err = run("store", "put", str(snap_file), "--config", str(config), "--json")
    assert code == 0, err
    assert json.loads(out)["sas"] == 25 and json.loads(out)["epoch"] == 0

    out_file = tmp_path / "back.json"
    code, out, err = run(
        "store", "get", "--server-id", "gw1", "--config", str(config), "-o", str(out_file), "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert len(data["sad"]) == 25 and len(data["spd"]) == 25
    assert all(sa["aead"]["key"] is None for sa in data["sad"])  # keys never printed unasked
    assert stat.S_IMODE(os.stat(out_file).st_mode) == 0o600
    back = Snapshot.from_bytes(out_file.read_bytes())
    assert sorted(back.sad, key=lambda s: s.spi) == sad
    assert sorted(back.spd, key=lambda p: p.index) == spd

    code, out, err = run(
        "store", "get", "--spi", hex(sad[3].spi), "--dst", str(sad[3].daddr), "-c", str(config)
    )
    assert code == 0, err
    assert f"spi 0x{sad[3].spi:08x}" in out and "policy out" in out

    code, out, err = run("store", "claim", "--server-id", "gw1", "-c", str(config), "--json")
    assert code == 0 and json.loads(out)["epoch"] == 1

    code, out, err = run("store", "stats", "--config", str(config), "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["servers"] == [{"server_id": "gw1", "epoch": 1, "sas": 25, "policies": 25}]
    assert stats["requests_served"] >= 4 and "drops_total" in stats


def test_cli_errors_are_one_line(config: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    exe = str(Path(sys.executable).with_name("ipsec-ha"))
    proc = subprocess.run(
        [exe, "store", "get", "--spi", "1", "--dst", "192.0.2.1", "-c", str(config)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "store refused: no SA" in proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace("[client]\n", '[client]\ncolour = "blue"\n'))
    proc = subprocess.run([exe, "store", "stats", "-c", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == f"ipsec-ha: error: config {bad}: [client].colour: unknown key\n"
    proc = subprocess.run([exe, "store", "get", "-c", str(config)], capture_output=True, text=True)
    assert proc.returncode == 2 and "either --server-id" in proc.stderr


def test_client_times_out_with_a_clear_error(tmp_path: Path) -> None:
    client = StoreClient("127.0.0.1", free_udp_port(), b"k" * 32, "gw1", timeout=0.05, retries=1)
    with pytest.raises(StoreTimeoutError, match="did not answer the handshake"):
        client.heartbeat()
    client.close()

"""The daemon's on-demand wiring with fakes: started when enabled, counters in the status file,
installs ordered behind the kernel lock."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_daemon import FakeClient
from test_executor import FakeKernel

from appliance.failover.config import load_daemon_config
from appliance.failover.daemon import FailoverDaemon

pytestmark = pytest.mark.unit


class FakeOnDemand:
    def __init__(self, config: Any, guard: Callable[[Callable[[], bool]], bool]) -> None:
        self.guard = guard
        self.started = self.stopped = False
        self.queued = 0

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def status(self) -> dict[str, Any]:
        return {"running": self.started, "queued": self.queued}

    async def keep_held(self) -> None:
        await asyncio.Event().wait()


def config_file(tmp_path: Path, enabled: bool, timeout_s: float = 2.0) -> Any:
    psk = tmp_path / "cluster.psk"
    psk.write_text("ab" * 32)
    os.chmod(psk, 0o600)
    path = tmp_path / "daemon.toml"
    path.write_text(
        '[node]\nid = "gw3"\nserver_id = "192.0.2.1"\nnode_index = 2\n'
        f'[store]\nservers = ["198.51.100.2"]\npsk_file = "{psk}"\n'
        f'[failover]\nstatus_file = "{tmp_path}/status.json"\n'
        '[nft]\nvips = ["192.0.2.1"]\ntrap_queue = 3\n'
        f"[ondemand]\nenabled = {str(enabled).lower()}\ntimeout_s = {timeout_s}\n"
    )
    return load_daemon_config(path)


def make(tmp_path: Path, enabled: bool = True, timeout_s: float = 2.0) -> FailoverDaemon:
    cfg = config_file(tmp_path, enabled, timeout_s)
    daemon = FailoverDaemon(
        cfg, FakeKernel(), [FakeClient("198.51.100.2")], notify_log=tmp_path / "n.jsonl"
    )
    daemon.ondemand_factory = FakeOnDemand  # type: ignore[assignment]
    return daemon


def test_enabled_starts_it_and_the_status_file_carries_its_counters(tmp_path: Path) -> None:
    daemon = make(tmp_path)
    daemon._start_ondemand()
    assert isinstance(daemon.ondemand, FakeOnDemand) and daemon.ondemand.started
    daemon._write_status(None, None, ok=True)
    status = json.loads(daemon.config.failover.status_file.read_text())
    assert status["ondemand"] == {"running": True, "queued": 0}
    assert status["role"] == "init"


def test_disabled_starts_nothing(tmp_path: Path) -> None:
    daemon = make(tmp_path, enabled=False)
    daemon._start_ondemand()
    assert daemon.ondemand is None
    daemon._write_status(None, None, ok=True)
    assert "ondemand" not in json.loads(daemon.config.failover.status_file.read_text())


def test_an_install_waits_for_the_kernel_lock(tmp_path: Path) -> None:
    daemon = make(tmp_path)
    order: list[str] = []

    async def body() -> None:
        daemon._loop = asyncio.get_running_loop()
        results: list[bool] = []
        async with daemon._kernel_lock:  # a transition's install
            thread = threading.Thread(
                target=lambda: results.append(
                    daemon._under_kernel_lock(lambda: order.append("on-demand") is None)
                )
            )
            thread.start()
            await asyncio.sleep(0.2)
            order.append("transition")
        await asyncio.to_thread(thread.join)
        assert results == [True]

    asyncio.run(body())
    assert order == ["transition", "on-demand"]


def test_an_install_that_cannot_get_the_lock_in_time_fails(tmp_path: Path) -> None:
    daemon = make(tmp_path, timeout_s=0.1)
    ran: list[bool] = []

    async def body() -> None:
        daemon._loop = asyncio.get_running_loop()
        results: list[bool] = []
        async with daemon._kernel_lock:
            thread = threading.Thread(
                target=lambda: results.append(
                    daemon._under_kernel_lock(lambda: ran.append(True) is None)
                )
            )
            thread.start()
            await asyncio.to_thread(thread.join)
        await asyncio.sleep(0.05)
        assert results == [False]

    asyncio.run(body())
    assert ran == []

"""Run ``ipsec-ha store serve`` as a real subprocess (optionally inside a netns) for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.store.client import StoreClient, StoreTimeoutError

IPSEC_HA = str(Path(sys.executable).with_name("ipsec-ha"))


def write_psk(path: Path) -> bytes:
    key = os.urandom(32).hex().encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, key + b"\n")
    os.close(fd)
    return key


def write_config(
    path: Path,
    psk_file: Path,
    listen: str,
    port: int,
    backend: str,
    db_path: Path | None = None,
    etcd_endpoints: list[str] | None = None,
    client_server: str | None = None,
    node_id: str = "gw1",
    server_max_datagram: int | None = None,
) -> Path:
    lines = [
        "[store]",
        f'listen = "{listen}"',
        f"port = {port}",
        f'psk_file = "{psk_file}"',
        f'backend = "{backend}"',
    ]
    if server_max_datagram is not None:  # the store caps every reply at its own maximum
        lines.append(f"max_datagram = {server_max_datagram}")
    if backend == "sqlite":
        lines += ["[store.sqlite]", f'path = "{db_path}"']
    else:
        lines += ["[store.etcd]", f"endpoints = {etcd_endpoints!r}".replace("'", '"')]
    lines += [
        "[client]",
        f'server = "{client_server or listen}"',
        f"port = {port}",
        f'psk_file = "{psk_file}"',
        f'node_id = "{node_id}"',
        "timeout = 0.3",
        "retries = 6",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class StoreProcess:
    config: Path
    netns: str | None
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        cmd = [IPSEC_HA, "store", "serve", "--config", str(self.config)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def wait_ready(client: StoreClient, proc: StoreProcess, timeout: float = 20.0) -> None:
    """Until the server answers a heartbeat (call from the client's namespace)."""
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise RuntimeError(f"store server exited; log: {proc.log.read_text()[-2000:]}")
        try:
            client.heartbeat()
            return
        except StoreTimeoutError:
            if time.monotonic() > deadline:
                raise

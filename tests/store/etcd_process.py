"""Start and stop real etcd servers for the tests and the benchmark.

Every member gets a data dir under the caller's temp dir and is always
killed (``stop``); a cluster's members can run in network namespaces.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ETCD = "/usr/bin/etcd"
# Large enough for the biggest SA_Stor batch the server applies in one transaction.
ETCD_LIMITS = ["--max-txn-ops", "20000", "--max-request-bytes", str(16 * 1024 * 1024)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EtcdMember:
    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    netns: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def start(self, initial_cluster: str) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            ETCD,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            *ETCD_LIMITS,
        ]  # fmt: skip
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        log = open(self.data_dir.parent / f"{self.name}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        log.close()

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(10)


def wait_healthy(member: EtcdMember, timeout: float = 20.0) -> None:
    """Wait until ``member`` answers /health with true (only for root-ns members)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if member.proc is not None and member.proc.poll() is not None:
            raise RuntimeError(f"etcd {member.name} exited: see {member.data_dir.parent}")
        try:
            conn = http.client.HTTPConnection(member.host, member.client_port, timeout=1)
            conn.request("GET", "/health")
            body = conn.getresponse().read()
            conn.close()
            if json.loads(body).get("health") in (True, "true"):
                return
        except (OSError, ValueError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"etcd {member.name} did not become healthy in {timeout} s")


def start_single(base: Path) -> EtcdMember:
    """One etcd on 127.0.0.1 with free ports; the caller must ``stop()`` it."""
    member = EtcdMember("single", "127.0.0.1", free_port(), free_port(), base / "etcd-single")
    member.start(f"single={member.peer_url}")
    try:
        wait_healthy(member)
    except BaseException:
        member.stop()
        raise
    return member

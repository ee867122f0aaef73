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
import ssl
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


@dataclass(frozen=True)
class EtcdTls:
    """PEM files for an etcd that serves TLS and requires client certificates."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx

    def etcdctl_flags(self) -> list[str]:
        return [f"--cacert={self.ca}", f"--cert={self.client_cert}", f"--key={self.client_key}"]


def make_tls(directory: Path, server_ips: list[str], client_cn: str = "") -> EtcdTls:
    """A CA, an etcd server certificate for ``server_ips`` and a client certificate (keys 0600).

    The client certificate has no Common Name by default: with authentication
    on, etcd's JSON gateway refuses a client certificate that has one.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])

    def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, pem)
        os.close(fd)
        return path

    def issue(
        subject: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey,
        ca: bool, usage: list[x509.ObjectIdentifier], ips: list[str],
    ) -> x509.Certificate:  # fmt: skip
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name("ipsec-ha test CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        if ips:
            sans = [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def write_cert(path: Path, cert: x509.Certificate) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key, srv_key, cli_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    server_usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return EtcdTls(
        write_cert(directory / "ca.pem", issue("ipsec-ha test CA", ca_key, ca_key, True, [], [])),
        write_cert(
            directory / "etcd.pem", issue("etcd", srv_key, ca_key, False, server_usage, server_ips)
        ),
        write_key(directory / "etcd-key.pem", srv_key),
        write_cert(
            directory / "client.pem",
            issue(client_cn, cli_key, ca_key, False, [ExtendedKeyUsageOID.CLIENT_AUTH], []),
        ),
        write_key(directory / "client-key.pem", cli_key),
    )


@dataclass
class EtcdMember:
    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    netns: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    tls: EtcdTls | None = None
    """Serve clients over TLS and require their certificates (--client-cert-auth)."""

    @property
    def endpoint(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{self.host}:{self.client_port}"

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
        if self.tls is not None:
            cmd += [
                "--client-cert-auth",
                "--trusted-ca-file", str(self.tls.ca),
                "--cert-file", str(self.tls.server_cert),
                "--key-file", str(self.tls.server_key),
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
            if member.tls is None:
                conn = http.client.HTTPConnection(member.host, member.client_port, timeout=1)
            else:
                conn = http.client.HTTPSConnection(
                    member.host, member.client_port, timeout=1, context=member.tls.client_context()
                )
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


def leader_of(members: list[EtcdMember]) -> EtcdMember:
    """The member the others follow, as each member reports it (call from a namespace
    that reaches them)."""
    by_id: dict[str, EtcdMember] = {}
    leader = ""
    for member in members:
        conn = http.client.HTTPConnection(member.host, member.client_port, timeout=2)
        try:
            conn.request("POST", "/v3/maintenance/status", body="{}")
            status = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        by_id[status["header"]["member_id"]] = member
        leader = status["leader"]
    return by_id[leader]

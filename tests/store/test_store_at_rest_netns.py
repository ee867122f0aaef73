"""Key material at rest, with the real server over UDP between namespaces (issue 14, point 7).

* SAs stored through ``ipsec-ha store serve`` leave no key byte in the SQLite
  file (nor its WAL) or in a plain etcd range read, and come back intact.
* After a cluster key rotation the server opens old records only with the
  previous key configured, refuses them clearly without it, and ``ipsec-ha
  store reseal`` moves every record to the new key.
* etcd with ``--client-cert-auth`` and authentication enabled: the store works
  with a client certificate and a user; without the certificate, or with a
  wrong password, ``serve`` fails with an error naming the problem.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from entries_factory import make_state
from etcd_process import ETCD, EtcdMember, EtcdTls, make_tls, wait_healthy
from netns_star import in_netns, netns_star
from store_process import IPSEC_HA, StoreProcess, wait_ready, write_config, write_psk

from appliance.model import SadEntry
from appliance.store.client import StoreClient, StoreRefusedError
from appliance.store.config import load_client_config

pytestmark = pytest.mark.netns

SERVER_ADDR = "192.0.2.1"
CLIENT_ADDR = "192.0.2.2"
PORT = 4501
N = 50
ETCDCTL = str(Path(ETCD).with_name("etcdctl"))


@dataclass
class Lab:
    ns: dict[str, str]
    tmp: Path
    backend: str
    etcd: EtcdMember | None

    def config(
        self,
        psk: Path,
        previous: list[Path] | None = None,
        etcd_extra: str = "",
        name: str = "store.toml",
    ) -> Path:
        path = write_config(
            self.tmp / name,
            psk,
            SERVER_ADDR,
            PORT,
            self.backend,
            db_path=self.tmp / "store.db",
            etcd_endpoints=[self.etcd.endpoint] if self.etcd else None,
            client_server=SERVER_ADDR,
        )
        text = path.read_text()
        if previous:
            files = json.dumps([str(p) for p in previous])
            text = text.replace("[store]\n", f"[store]\nprevious_psk_files = {files}\n", 1)
        if self.etcd is not None:
            text = text.replace("[store.etcd]\n", f"[store.etcd]\nretry_for = 3.0\n{etcd_extra}", 1)
        path.write_text(text)
        return path

    def serve(self, config: Path) -> StoreProcess:
        proc = StoreProcess(config, self.ns["srv"], self.tmp / "server.log")
        proc.start()
        return proc

    def run(self, config: Path, server: StoreProcess, fn, *args):  # type: ignore[no-untyped-def]
        """``fn(client, *args)`` in the client namespace, once the server answers."""

        def body():  # type: ignore[no-untyped-def]
            cfg = load_client_config(config)
            with StoreClient.from_config(cfg, max_datagram=8000) as client:
                wait_ready(client, server)
                return fn(client, *args)

        return in_netns(self.ns["cli"], body)

    def etcdctl(self, *args: str) -> bytes:
        assert self.etcd is not None
        flags = [f"--endpoints={self.etcd.endpoint}"]
        if self.etcd.tls is not None:
            flags += self.etcd.tls.etcdctl_flags()
        cmd = ["ip", "netns", "exec", self.ns["srv"], ETCDCTL, *flags, *args]
        env = {**os.environ, "ETCDCTL_API": "3"}
        done = subprocess.run(cmd, capture_output=True, env=env, timeout=30)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout


def _start_etcd(tmp: Path, netns: str, tls: EtcdTls | None = None) -> EtcdMember:
    etcd = EtcdMember("e1", "127.0.0.1", 2379, 2380, tmp / "etcd" / "e1", netns, tls=tls)
    etcd.start(f"e1={etcd.peer_url}")
    in_netns(netns, wait_healthy, etcd)
    return etcd


@pytest.fixture(params=["sqlite", "etcd"])
def lab(request: pytest.FixtureRequest, tmp_path: Path, require_root: None) -> Iterator[Lab]:
    with netns_star({"srv": SERVER_ADDR, "cli": CLIENT_ADDR}) as ns:
        etcd = _start_etcd(tmp_path, ns["srv"]) if request.param == "etcd" else None
        try:
            yield Lab(ns, tmp_path, request.param, etcd)
        finally:
            if etcd is not None:
                etcd.stop()


def _keys(sad: list[SadEntry]) -> list[bytes]:
    keys = [sa.aead.key.data for sa in sad if sa.aead is not None]
    assert len(keys) == len(sad)
    return keys


def _put(client: StoreClient, sad: list[SadEntry], spd: list) -> None:  # type: ignore[type-arg]
    client.put_entries("gw1", 1, sad, spd)


def _get_all(client: StoreClient) -> list[SadEntry]:
    return list(client.get_server("gw1").sad)


def _get_one(client: StoreClient, sa: SadEntry) -> SadEntry:
    return client.get_spi(sa.spi, str(sa.daddr)).sad


def _etcd_values(lab: Lab) -> bytes:
    """Every value under /ipsec-ha/ as a plain range read returns it, base64 fields decoded."""
    out = json.loads(lab.etcdctl("get", "--prefix", "/ipsec-ha/", "-w", "json"))
    raw = [base64.b64decode(kv["value"]) for kv in out.get("kvs", [])]
    assert raw, "etcd holds nothing under /ipsec-ha/"
    decoded = list(raw)
    for value in raw:
        try:
            record = json.loads(value)
        except ValueError:
            continue
        if isinstance(record, dict):
            decoded += [base64.b64decode(v) for v in record.values() if isinstance(v, str)]
    return b"\0".join(decoded)


def _sqlite_bytes(lab: Lab) -> bytes:
    files = sorted(lab.tmp.glob("store.db*"))
    assert any(f.name == "store.db-wal" for f in files)
    return b"".join(f.read_bytes() for f in files)


def test_stored_keys_are_not_in_the_backend_but_come_back_intact(lab: Lab) -> None:
    sad, spd = make_state(N)
    psk = lab.tmp / "cluster.psk"
    write_psk(psk)
    config = lab.config(psk)
    server = lab.serve(config)
    try:
        lab.run(config, server, _put, sad, spd)
        raw = _etcd_values(lab) if lab.etcd else _sqlite_bytes(lab)
        leaked = [k.hex() for k in _keys(sad) if k in raw]
        assert not leaked, f"{len(leaked)} of {N} SA keys readable in the {lab.backend} backend"
        assert sorted(lab.run(config, server, _get_all), key=lambda s: s.spi) == sad
        assert lab.run(config, server, _get_one, sad[7]) == sad[7]
    finally:
        server.kill()


def _refused(client: StoreClient, sa: SadEntry) -> str:
    with pytest.raises(StoreRefusedError) as info:
        client.get_spi(sa.spi, str(sa.daddr))
    return str(info.value)


def test_rotated_key_opens_old_records_only_with_the_previous_key(lab: Lab) -> None:
    sad, spd = make_state(N)
    old, new = lab.tmp / "old.psk", lab.tmp / "new.psk"
    write_psk(old)
    write_psk(new)
    before = lab.config(old, name="before.toml")
    server = lab.serve(before)
    try:
        lab.run(before, server, _put, sad, spd)
    finally:
        server.kill()

    rotated = lab.config(new, previous=[old], name="rotated.toml")
    only_new = lab.config(new, name="only-new.toml")
    server = lab.serve(only_new)
    try:
        message = lab.run(only_new, server, _refused, sad[3])
        assert f"spi 0x{sad[3].spi:08x}" in message and "previous_psk_files" in message
    finally:
        server.kill()
    server = lab.serve(rotated)
    try:
        assert sorted(lab.run(rotated, server, _get_all), key=lambda s: s.spi) == sad
    finally:
        server.kill()

    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            lab.ns["srv"],
            IPSEC_HA,
            "store",
            "reseal",
            "--config",
            str(rotated),
            "--json",
        ],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert json.loads(done.stdout) == {"servers": 1, "resealed": N, "current": 0}

    server = lab.serve(only_new)
    try:
        assert sorted(lab.run(only_new, server, _get_all), key=lambda s: s.spi) == sad
    finally:
        server.kill()


# -- etcd with client certificates and authentication -------------------------------


@pytest.fixture
def secure_lab(tmp_path: Path, require_root: None) -> Iterator[Lab]:
    with netns_star({"srv": SERVER_ADDR, "cli": CLIENT_ADDR}) as ns:
        tls = make_tls(tmp_path / "pki", ["127.0.0.1", SERVER_ADDR])
        etcd = _start_etcd(tmp_path, ns["srv"], tls)
        try:
            lab = Lab(ns, tmp_path, "etcd", etcd)
            lab.etcdctl("user", "add", "root:root-pw-0123")
            lab.etcdctl("user", "add", "ipsecha:good-pw-4567")
            lab.etcdctl("role", "add", "ipsecha")
            lab.etcdctl(
                "role", "grant-permission", "ipsecha", "--prefix=true", "readwrite", "/ipsec-ha/"
            )
            lab.etcdctl("user", "grant-role", "ipsecha", "ipsecha")
            lab.etcdctl("auth", "enable")
            yield lab
        finally:
            etcd.stop()


def _password_file(path: Path, password: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, password.encode() + b"\n")
    os.close(fd)
    return path


def _etcd_keys(tls: EtcdTls, cert: bool = True) -> str:
    text = f'ca_file = "{tls.ca}"\n'
    if cert:
        text += f'cert_file = "{tls.client_cert}"\nkey_file = "{tls.client_key}"\n'
    return text


def _serve_fails(lab: Lab, config: Path) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", lab.ns["srv"], IPSEC_HA, "store", "serve", "--config", str(config)],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0
    return done.stderr.decode(errors="replace")


def test_etcd_with_client_certificate_and_user_authentication(secure_lab: Lab) -> None:
    lab = secure_lab
    assert lab.etcd is not None and lab.etcd.tls is not None
    tls = lab.etcd.tls
    psk = lab.tmp / "cluster.psk"
    write_psk(psk)
    good = _password_file(lab.tmp / "etcd.pw", "good-pw-4567")
    bad = _password_file(lab.tmp / "wrong.pw", "wrong-pw-89")
    user = 'user = "ipsecha"\n'

    config = lab.config(psk, etcd_extra=_etcd_keys(tls) + user + f'password_file = "{good}"\n')
    sad, spd = make_state(N)
    server = lab.serve(config)
    try:
        lab.run(config, server, _put, sad, spd)
        assert lab.run(config, server, _get_one, sad[5]) == sad[5]
    finally:
        server.kill()

    no_cert = lab.config(
        psk, etcd_extra=_etcd_keys(tls, cert=False) + user + f'password_file = "{good}"\n',
        name="no-cert.toml",
    )  # fmt: skip
    error = _serve_fails(lab, no_cert)
    assert "TLS failed" in error and "cert_file" in error, error

    wrong = lab.config(
        psk, etcd_extra=_etcd_keys(tls) + user + f'password_file = "{bad}"\n', name="wrong.toml"
    )
    error = _serve_fails(lab, wrong)
    assert "refused user ipsecha" in error and "authentication failed" in error, error
    assert "wrong-pw" not in error and "good-pw" not in error

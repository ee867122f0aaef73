"""``ipsec-ha store serve`` with ``[metrics]``: scraped over HTTP from another namespace.

The store server runs in its own namespace with its metrics on that
namespace's address; a client namespace stores SAs for two server IDs,
claims, misses a lookup, retransmits a request, sends a malformed datagram
and leaves one handshake half-open; a third namespace scrapes
``http://192.0.2.1:9642/metrics`` and every store metric is checked against
what the client did. SQLite and etcd.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from entries_factory import store_two_server_ids
from etcd_process import EtcdMember, wait_healthy
from netns_star import in_netns, netns_star
from prometheus_client.parser import text_string_to_metric_families
from store_process import StoreProcess, wait_ready, write_config, write_psk

from appliance.channel.endpoint import ChannelEndpoint, Side
from appliance.channel.events import DropReason
from appliance.store.client import StoreClient
from appliance.store.config import load_client_config, load_psk
from appliance.wire.constants import ExchangeType
from appliance.wire.messages import Message, encode_message
from appliance.wire.payloads import EpochPayload, ServerIdPayload

pytestmark = pytest.mark.netns

SERVER_ADDR = "192.0.2.1"
PORT = 4501
METRICS_PORT = 9642
URL = f"http://{SERVER_ADDR}:{METRICS_PORT}/metrics"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Lab:
    ns: dict[str, str]
    config: Path
    server: StoreProcess
    backend: str

    def client(self) -> StoreClient:
        return StoreClient.from_config(load_client_config(self.config))

    def scrape(self) -> Samples:
        """GET /metrics from the scraper's namespace (neither the store's nor the client's)."""
        return in_netns(self.ns["scr"], _scrape)


def _scrape() -> Samples:
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(URL, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture(params=["sqlite", "etcd"])
def lab(request: pytest.FixtureRequest, tmp_path: Path, require_root: None) -> Iterator[Lab]:
    nodes = {"srv": SERVER_ADDR, "cli": "192.0.2.2", "scr": "192.0.2.3"}
    with netns_star(nodes) as ns:
        psk = tmp_path / "cluster.psk"
        write_psk(psk)
        etcd = None
        if request.param == "etcd":
            etcd = EtcdMember("e1", "127.0.0.1", 2379, 2380, tmp_path / "etcd" / "e1", ns["srv"])
            etcd.start(f"e1={etcd.peer_url}")
            in_netns(ns["srv"], wait_healthy, etcd)
        config = write_config(
            tmp_path / "store.toml",
            psk,
            SERVER_ADDR,
            PORT,
            request.param,
            db_path=tmp_path / "store.db",
            etcd_endpoints=[etcd.endpoint] if etcd else None,
        )
        with config.open("a") as f:
            f.write(f'[metrics]\nlisten = "{SERVER_ADDR}:{METRICS_PORT}"\n')
        server = StoreProcess(config, ns["srv"], tmp_path / "server.log")
        server.start()
        try:
            yield Lab(ns, config, server, request.param)
        finally:
            server.kill()
            if etcd is not None:
                etcd.stop()


def retransmit_once(client: StoreClient) -> None:
    """A claim sent twice under one message ID: the second is answered from the cache."""
    data = encode_message(
        Message(ExchangeType.SA_STOR, 77, (ServerIdPayload.parse("gw9"), EpochPayload(0)))
    )
    for _ in range(2):
        waiting: dict[int, Any] = {77: None}
        client._channel.send(data, time.monotonic())
        client._flush()
        deadline = time.monotonic() + 10
        while waiting[77] is None and time.monotonic() < deadline:
            client._pump(time.monotonic() + 0.2, waiting)
        assert waiting[77] is not None


def half_open_handshake(psk: bytes) -> Callable[[], None]:
    """Complete a handshake without the confirming datagram; returns the call that confirms."""
    endpoint = ChannelEndpoint(psk, "gw-half", Side.CLIENT)
    addr = (SERVER_ADDR, PORT)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    endpoint.connect(addr, time.monotonic())
    while not endpoint.established:
        for datagram, _ in endpoint.datagrams_to_send(time.monotonic()):
            sock.sendto(datagram, addr)
        reply, _ = sock.recvfrom(65535)
        endpoint.receive_datagram(reply, addr, time.monotonic())

    def confirm() -> None:
        for datagram, _ in endpoint.datagrams_to_send(time.monotonic()):
            sock.sendto(datagram, addr)
        sock.close()

    return confirm


def test_each_store_metric_is_scraped_from_another_namespace(lab: Lab) -> None:
    psk = load_psk(load_client_config(lab.config).psk_file)

    def scenario() -> dict[str, Any]:
        with lab.client() as client:
            wait_ready(client, lab.server)
            stor = store_two_server_ids(client)
            retransmit_once(client)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
                junk.sendto(b"\x07junk", (SERVER_ADDR, PORT))  # no datagram type: malformed
            confirm = half_open_handshake(psk)
            # Scraped while the client's association is up and the other is half-open.
            during = _poll(lab, lambda s: value(s, _DROPS, reason="malformed") >= 1)
            confirm()
            after = _poll(lab, lambda s: value(s, "ipsec_ha_store_server_half_open") == 0)
            return {"stor": stor + 1, "during": during, "after": after}

    done = in_netns(lab.ns["cli"], scenario)
    samples: Samples = done["during"]

    assert value(samples, "ipsec_ha_store_server_info", backend=lab.backend, node="store") == 1
    for sid, sas, policies, epoch in (("gw1", 3, 3, 2), ("gw2", 2, 2, 5), ("gw9", 0, 0, 1)):
        assert value(samples, "ipsec_ha_store_server_sas", server_id=sid) == sas
        assert value(samples, "ipsec_ha_store_server_policies", server_id=sid) == policies
        assert value(samples, "ipsec_ha_store_server_epoch", server_id=sid) == epoch
        assert value(samples, "ipsec_ha_store_server_ike_sas", server_id=sid) == (sid == "gw1")
    requests = "ipsec_ha_store_server_requests_total"
    # The puts, the claim and the retransmitted claim's first transmission (its repeat was
    # answered from the cache, not counted as a request).
    assert value(samples, requests, exchange="sa_stor", status="ok") >= done["stor"]
    assert value(samples, requests, exchange="sa_retr", status="not_found") >= 1
    assert value(samples, requests, exchange="heartbeat", status="ok") >= 1  # wait_ready
    assert value(samples, "ipsec_ha_store_server_retransmits_answered_total") >= 1
    assert value(samples, "ipsec_ha_store_server_associations") >= 2  # the client, the half
    assert value(samples, "ipsec_ha_store_server_half_open") == 1
    assert value(samples, _DROPS, reason="malformed") == 1
    assert value(samples, _DROPS, reason="undecodable-request") == 0
    assert {labels for name, labels in samples if name == _DROPS} >= {
        (("reason", r.value),) for r in DropReason
    }
    assert value(samples, "ipsec_ha_store_server_datagrams_received_total") >= done["stor"] + 3
    backend = "ipsec_ha_store_server_backend_seconds"
    assert value(samples, f"{backend}_count", operation="write") > 0
    assert value(samples, f"{backend}_count", operation="read") > 0
    assert value(samples, f"{backend}_bucket", operation="write", le="+Inf") == value(
        samples, f"{backend}_count", operation="write"
    )

    after: Samples = done["after"]
    assert value(after, "ipsec_ha_store_server_half_open") == 0
    assert value(after, "ipsec_ha_store_server_associations") >= 2


_DROPS = "ipsec_ha_store_server_channel_drops_total"


def _poll(lab: Lab, ready: Callable[[Samples], bool], timeout: float = 10.0) -> Samples:
    """Scrape until ``ready`` (a datagram the server has not read yet is not counted yet)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = lab.scrape()
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


@pytest.mark.parametrize("lab", ["sqlite"], indirect=True)
def test_the_metrics_port_is_not_served_without_the_table(lab: Lab) -> None:
    """The same store without [metrics]: nothing listens on the port."""
    text = lab.config.read_text()
    lab.server.kill()
    lab.config.write_text(text[: text.index("[metrics]")])
    lab.server.start()

    def ready() -> None:
        with lab.client() as client:
            wait_ready(client, lab.server)

    in_netns(lab.ns["cli"], ready)
    with pytest.raises(OSError):
        lab.scrape()

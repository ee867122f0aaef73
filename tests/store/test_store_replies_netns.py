"""Replies that fit, the server list in pages, epoch bounds: the real server over UDP (issue 14).

The store server runs as ``ipsec-ha store serve`` in one namespace, with
SQLite and with a real etcd (the ``lab`` fixture of
``test_store_server_netns``); the client runs in another and notes the size
of every datagram the store sends it.

* More than 1,000 server IDs: Heartbeat and ``stats`` still answer and list
  every one, page by page, each reply within the store's ``max_datagram``.
* ``[store] max_datagram = 1400`` holds against a client that asks for
  65,000-byte pages: bulk retrieval still returns everything, an answer that
  cannot fit is refused with TOO_LARGE, and no datagram passes 1400 bytes.
* A claim of 2**63-1 or a huge jump is refused with EPOCH_LIMIT and changes
  nothing; ordinary claims go on.  The CLI says so in one line.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
from typing import Any

import pytest
import test_store_server_netns
from entries_factory import make_policy, make_sa, make_state
from store_process import IPSEC_HA
from test_store_server_netns import Lab

from appliance.store.base import MAX_EPOCH, MAX_EPOCH_STEP, EpochLimitError
from appliance.store.client import ResponseTooLargeError, StoreClient, check_response
from appliance.wire.constants import ExchangeType
from appliance.wire.payloads import EpochPayload, ServerIdPayload

pytestmark = pytest.mark.netns

lab = test_store_server_netns.lab  # the fixture: a store server on SQLite, then on a real etcd


class _Recorder:
    """A client's socket that notes the size of every datagram received."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sizes: list[int] = []

    def recv(self, size: int) -> bytes:
        data = self.sock.recv(size)
        self.sizes.append(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def record_replies(client: StoreClient) -> list[int]:
    """From now on, the size of every datagram the store sends ``client``."""
    recorder = _Recorder(client._sock)
    client._sock = recorder  # type: ignore[assignment]
    return recorder.sizes


def restart_with_max_datagram(lab: Lab, max_datagram: int | None) -> None:
    """Restart the store server with ``[store] max_datagram`` set (None: the default)."""
    lab.server.kill()
    store, rest = lab.config.read_text().split("[client]", 1)
    lines = [line for line in store.splitlines() if not line.startswith("max_datagram")]
    if max_datagram is not None:
        lines.insert(lines.index("[store]") + 1, f"max_datagram = {max_datagram}")
    lab.config.write_text("\n".join(lines) + "\n[client]" + rest)
    lab.server.start()


def test_stats_list_over_a_thousand_server_ids_in_replies_that_fit(lab: Lab) -> None:
    restart_with_max_datagram(lab, None)  # the fixture's store allows larger replies
    ids = [f"gw-{n:04d}.example.net" for n in range(1100)]

    def scenario(client: StoreClient) -> tuple[dict[str, Any], dict[str, Any], list[int]]:
        sizes = record_replies(client)
        claims = [
            (ExchangeType.SA_STOR, [ServerIdPayload.parse(sid), EpochPayload(0)]) for sid in ids
        ]
        for response in client.exchange(claims):
            check_response(response)
        return client.heartbeat(servers=False), client.stats(), sizes

    summary, stats, sizes = lab.run(scenario)
    # The liveness heartbeat is one small answer; stats pages through the list.
    assert summary["server_count"] == 1100 and "servers" not in summary
    assert [s["server_id"] for s in stats["servers"]] == ids
    assert {(s["epoch"], s["sas"], s["policies"]) for s in stats["servers"]} == {(1, 0, 0)}
    assert stats["server_count"] == 1100 and stats["requests_served"] > 1100
    assert len(sizes) > 1100 + 50  # the claims, the summary and over 50 pages
    assert max(sizes) <= 1400  # the store's default max_datagram


def test_store_max_datagram_bounds_every_reply(lab: Lab) -> None:
    restart_with_max_datagram(lab, 1400)
    sad, spd = make_state(200)
    crowded = make_sa(500)  # one SA with 12 policies: its answer by SPI cannot fit 1400 bytes
    policies = [dataclasses.replace(make_policy(500), index=(i << 3) | 1) for i in range(1, 13)]

    def scenario(client: StoreClient) -> tuple[Any, list[Any], list[int]]:
        sizes = record_replies(client)
        client.put_entries("gw1", 1, [*sad, crowded], [*spd, *policies])
        state = client.get_server("gw1")  # asks for 65,000-byte pages
        answers = [client.get_spi(sad[i].spi, str(sad[i].daddr)) for i in (0, 99, 199)]
        with pytest.raises(ResponseTooLargeError, match=r"raise \[store\] max_datagram"):
            client.get_spi(crowded.spi, str(crowded.daddr))
        return state, answers, sizes

    state, answers, sizes = lab.run(scenario, max_datagram=65000)
    assert sorted(sa.spi for sa in state.sad) == sorted(sa.spi for sa in [*sad, crowded])
    assert len(state.spd) == len(spd) + len(policies)
    assert state.pages > 20  # 1400-byte pages, not the 65,000 bytes asked for
    assert [a.sad for a in answers] == [sad[0], sad[99], sad[199]]
    assert max(sizes) <= 1400


def test_epoch_that_could_overflow_is_refused_and_changes_nothing(lab: Lab) -> None:
    def scenario(client: StoreClient) -> list[Any]:
        client.put_entries("gw1", 3, [make_sa(1)])
        refused = []
        for epoch in (MAX_EPOCH, 3 + MAX_EPOCH_STEP + 1):
            with pytest.raises(EpochLimitError) as err:
                client.claim("gw1", epoch)
            refused.append(err.value)
        with pytest.raises(EpochLimitError):
            client.put_entries("gw1", MAX_EPOCH, [make_sa(2)])
        after = client.get_server("gw1")
        return [*refused, after, client.claim("gw1"), client.claim("gw1", 10)]

    maximum, jump, state, next_claim, explicit = lab.run(scenario)
    assert maximum.current_epoch == 3 and jump.current_epoch == 3
    assert "more than 2**32 above the current epoch 3" in str(maximum)
    assert [sa.spi for sa in state.sad] == [make_sa(1).spi] and state.epoch == 3
    assert (next_claim, explicit) == (4, 10)

    # The CLI: one clear line on stderr, a non-zero exit, and still nothing changed.
    cmd = ["claim", "--server-id", "gw1", "--epoch", str(MAX_EPOCH), "-c", str(lab.config)]
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.ns["cli"], IPSEC_HA, "store", *cmd],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "epoch" in proc.stderr and "refused" in proc.stderr

    assert lab.run(lambda client: client.claim("gw1")) == 11

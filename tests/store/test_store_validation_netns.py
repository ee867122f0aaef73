"""Valid entries only, on the real server over UDP between namespaces (SQLite and etcd).

An SA_Stor holding one SAD entry whose attribute values do not decode is
refused by name and leaves nothing behind; an entry put straight into the
backend (bypassing that check) neither stops a bulk retrieval of its server
ID nor a takeover's fetch: it is skipped and counted.
"""

from __future__ import annotations

import pytest
import test_store_server_netns as server_tests
from entries_factory import make_policy, make_sa, make_state
from netns_star import in_netns
from test_store_server_netns import Lab
from test_store_validation import bad_sad_payload

from appliance.failover.executor import StoreAccess
from appliance.store import _convert as conv
from appliance.store.base import InvalidRequestError, NotFoundError, SaPut, SaStore
from appliance.store.client import StoreClient
from appliance.wire.constants import ExchangeType
from appliance.wire.payloads import EpochPayload, ServerIdPayload

pytestmark = pytest.mark.netns

lab = server_tests.lab  # the same server + backend fixture, sqlite and etcd


def open_backend(lab: Lab) -> SaStore:
    """The server's own backend, opened beside it (call in the server's namespace)."""
    from appliance.store.config import load_server_config
    from appliance.store.server import open_backend

    return open_backend(load_server_config(lab.config))


def test_sa_stor_with_a_cut_selector_is_refused_by_name_and_stores_nothing(lab: Lab) -> None:
    good, bad = make_sa(1), bad_sad_payload(2)
    payloads = [
        ServerIdPayload.parse("gw-door"),
        EpochPayload(1),
        conv.sad_to_payload(good),
        conv.spd_to_payload(make_policy(1)),
        bad,
    ]

    def scenario(client: StoreClient):  # type: ignore[no-untyped-def]
        with pytest.raises(InvalidRequestError) as refused:
            client._call(ExchangeType.SA_STOR, payloads)
        with pytest.raises(NotFoundError):
            client.get_spi(good.spi, str(good.daddr))
        return str(refused.value), client.get_server("gw-door")

    text, state = lab.run(scenario)
    assert "SAD entry 2" in text and f"0x{bad.spi:08x}" in text and "selector" in text
    assert state.sad_entries == [] and state.spd_entries == []


def test_an_entry_put_straight_into_the_backend_is_skipped_by_retrieval_and_takeover(
    lab: Lab,
) -> None:
    sad, spd = make_state(5, spi_base=0x60000000)
    bad = bad_sad_payload(7)
    bad_key = conv.sa_key_of_payload(bad)

    def inject() -> None:
        backend = open_backend(lab)
        try:
            backend.put("gw-old", 1, [SaPut(bad_key, conv.sad_entry_bytes(bad))], [])
        finally:
            backend.close()

    def scenario(client: StoreClient):  # type: ignore[no-untyped-def]
        client.put_entries("gw-old", 1, sad, spd)
        in_netns(lab.ns["srv"], inject)
        state = client.get_server("gw-old")
        return state, state.sad, state.spd, StoreAccess([client]).fetch("gw-old")

    state, got_sad, got_spd, fetched = lab.run(scenario)
    assert len(state.sad_entries) == 6  # the bad entry did come back from the store
    assert sorted(s.spi for s in got_sad) == [s.spi for s in sad]
    assert sorted(p.index for p in got_spd) == sorted(p.index for p in spd)
    assert len(state.skipped) == 1 and f"SPI 0x{bad.spi:08x}" in state.skipped[0]
    # The takeover's fetch completes with every good SA and reports the skipped one.
    assert sorted(s.spi for s in fetched.sad) == [s.spi for s in sad]
    assert len(fetched.skipped) == 1 and f"0x{bad.spi:08x}" in fetched.skipped[0]


def test_a_tampered_sealed_record_is_reported_in_its_place_and_the_rest_retrieved(
    lab: Lab,
) -> None:
    sad, spd = make_state(6, spi_base=0x61000000)
    victim = sad[2]
    victim_key = conv.sa_key_of_payload(conv.sad_to_payload(victim))

    def tamper() -> None:
        backend = open_backend(lab)
        inner = backend.inner  # type: ignore[attr-defined]  # the sealed store's backend
        try:
            found = inner.get_by_spi(victim_key)
            assert found is not None and found.sa.entry[:1] != b"\x01"  # sealed at rest
            flipped = bytearray(found.sa.entry)
            flipped[-1] ^= 0x01  # one bit of the GCM tag
            epoch = inner.epoch("gw-sealed")
            inner.put("gw-sealed", epoch, [SaPut(victim_key, bytes(flipped))], [])
        finally:
            backend.close()

    def scenario(client: StoreClient):  # type: ignore[no-untyped-def]
        client.put_entries("gw-sealed", 1, sad, spd)
        in_netns(lab.ns["srv"], tamper)
        state = client.get_server("gw-sealed")
        return state, state.sad, StoreAccess([client]).fetch("gw-sealed")

    state, got_sad, fetched = lab.run(scenario)
    others = sorted(s.spi for s in sad if s is not victim)
    assert sorted(s.spi for s in got_sad) == others
    assert len(state.skipped) == 1 and f"0x{victim.spi:08x}" in state.skipped[0]
    assert "authenticate" in state.skipped[0]
    # The takeover's fetch completes with the other SAs and reports the tampered one.
    assert sorted(s.spi for s in fetched.sad) == others
    assert len(fetched.skipped) == 1 and f"0x{victim.spi:08x}" in fetched.skipped[0]

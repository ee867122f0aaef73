"""The check after a takeover (strongswan.safety_net): the IKE SAs of the recorded run
against what charon's vici says it holds."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_feed import _book_after

from appliance.strongswan.safety_net import (
    Connection,
    ExpectedIkeSa,
    HeldIkeSa,
    Initiate,
    SafetyNetError,
    check,
    expected_from,
    parse_list_conns,
    parse_list_sas,
    steady,
)

pytestmark = pytest.mark.unit


def recorded() -> ExpectedIkeSa:
    """The recorded IKE SA after its second CHILD SA: connection gw, CHILD SAs net, net2."""
    (state,) = _book_after("add_child").sas.values()
    return expected_from(state)


def test_what_charon_should_hold_comes_from_the_recorded_ike_sa() -> None:
    e = recorded()
    assert (e.connection, e.remote) == ("gw", "192.0.2.2")
    # The gateway's `ip xfrm state` showed spi 0xc1d8122e for net's inbound SA.
    assert [name for name, _ in e.children] == ["net", "net2"]
    assert e.children[0][1] == 0xC1D8122E


def list_sas_event(e: ExpectedIkeSa, state: str = "ESTABLISHED", drop: int | None = None,
                   spis: tuple[int, int] | None = None) -> dict[str, Any]:  # fmt: skip
    """What charon's vici ``list-sas`` sends for ``e`` (values are bytes, as the package
    gives them)."""
    i, r = spis or e.spis
    children = {
        f"{name}-{n}": {
            "name": str(name).encode(),
            "state": b"INSTALLED",
            "spi-in": f"{spi:08x}".encode(),
            "spi-out": b"c0ffee01",
        }
        for n, (name, spi) in enumerate(e.children, 1)
        if n - 1 != drop
    }
    return {
        str(e.connection): {
            "uniqueid": b"1",
            "state": state.encode(),
            "remote-host": str(e.remote).encode(),
            "initiator-spi": f"{i:016x}".encode(),
            "responder-spi": f"{r:016x}".encode(),
            "child-sas": children,
        }
    }


def list_conns_event(name: str = "gw", remote: list[bytes] | None = None) -> dict[str, Any]:
    return {
        name: {
            "remote_addrs": [b"192.0.2.2"] if remote is None else remote,
            "children": {"net": {}, "net2": {}},
        }
    }


def run(held: list[dict[str, Any]], conns: list[dict[str, Any]] | None = None) -> Any:
    return check(
        [recorded()],
        parse_list_sas(held),
        parse_list_conns([list_conns_event()] if conns is None else conns),
    )


def test_an_ike_sa_charon_holds_with_every_child_sa_is_kept() -> None:
    v = run([list_sas_event(recorded())])
    assert v.kept == (recorded().spis,) and v.clean and not v.initiate and not v.lost


def test_a_missing_ike_sa_is_initiated_again_child_by_child_when_charon_can() -> None:
    v = run([])
    spis = recorded().spis
    assert v.missing == (spis,) and not v.clean
    assert v.initiate == (Initiate("gw", "net", spis), Initiate("gw", "net2", spis))
    assert v.counts()["missing"] == 1 and v.counts()["to_initiate"] == 2


@pytest.mark.parametrize("remote", [[b"%any"], [b"192.0.2.0/24"], [b"192.0.2.2-192.0.2.9"], []])
def test_a_missing_ike_sa_of_a_connection_that_takes_any_peer_is_lost(remote: list[bytes]) -> None:
    v = run([], [list_conns_event(remote=remote)])
    assert v.missing == (recorded().spis,) and not v.initiate
    ((_, why),) = v.lost
    assert "only the peer can set it up again" in why


def test_a_missing_ike_sa_whose_connection_charon_lacks_is_lost() -> None:
    v = run([], [list_conns_event("other")])
    assert not v.initiate and "charon has no connection 'gw' loaded" in v.lost[0][1]


def test_the_same_connection_to_the_same_peer_with_other_spis_replaced_it() -> None:
    v = run([list_sas_event(recorded(), spis=(1, 2))])
    assert v.replaced == (recorded().spis,) and v.clean and not v.initiate


def test_a_passive_ike_sa_is_reported_and_not_initiated_twice() -> None:
    v = run([list_sas_event(recorded(), state="PASSIVE")])
    assert v.not_established == ((recorded().spis, "PASSIVE"),) and not v.initiate


def test_a_missing_child_sa_is_initiated_in_its_ike_sa() -> None:
    e = recorded()
    v = run([list_sas_event(e, drop=1)])
    assert v.children_missing == ((e.spis, e.children[1][1]),)
    assert v.initiate == (Initiate("gw", "net2", e.spis),)


def test_vici_spis_read_as_the_ike_header_writes_them() -> None:
    (held,) = parse_list_sas([list_sas_event(recorded())])
    assert held == HeldIkeSa(
        "gw", recorded().spis, "ESTABLISHED", "192.0.2.2",
        frozenset(spi for _, spi in recorded().children),
    )  # fmt: skip
    (conn,) = parse_list_conns([list_conns_event()])
    assert conn == Connection("gw", ("192.0.2.2",), ("net", "net2")) and conn.can_initiate


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ([], "list-sa event is not a section"),
        ({"gw": b"x"}, "IKE SA of 'gw' is not a section"),
        ({"gw": {"state": b"ESTABLISHED"}}, "initiator-spi is missing"),
        (
            {"gw": {"state": b"ESTABLISHED", "initiator-spi": b"zz", "responder-spi": b"00"}},
            "initiator-spi 'zz' is not hexadecimal",
        ),
        (
            {"gw": {"state": b"ESTABLISHED", "initiator-spi": b"1" * 17, "responder-spi": b"0"}},
            "is not a 64-bit SPI",
        ),
        (
            {"gw": {"state": b"\xff", "initiator-spi": b"1", "responder-spi": b"2"}},
            "state is not UTF-8",
        ),
    ],
)
def test_a_list_sas_answer_of_another_shape_is_an_error_that_says_where(
    event: Any, message: str
) -> None:
    with pytest.raises(SafetyNetError, match=message):
        parse_list_sas([event])


def test_a_list_conns_answer_of_another_shape_is_an_error() -> None:
    with pytest.raises(SafetyNetError, match="remote_addrs is not a list of values"):
        parse_list_conns([{"gw": {"remote_addrs": b"%any"}}])


vici_values = st.recursive(
    st.binary(max_size=20) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=15), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = ["state", "initiator-spi", "responder-spi", "remote-host", "child-sas", "spi-in",
        "remote_addrs", "children"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), vici_values, max_size=6))
def test_any_answer_gives_held_sas_or_a_safety_net_error(body: dict[str, Any]) -> None:
    for parse in (parse_list_sas, parse_list_conns):
        with contextlib.suppress(SafetyNetError):
            parse([{"gw": body}])


@pytest.mark.parametrize(
    ("remote", "initiable"),
    [
        (("192.0.2.2",), True), (("vpn-gw.example.com",), True), (("2001:db8::2",), True),
        (("192.0.2.2", "%any"), False), (("192.0.2.2-192.0.2.9",), False),
        (("192.0.2.0/24",), False), (("",), False), ((), False),
    ],
)  # fmt: skip
def test_a_connection_can_be_initiated_when_every_remote_address_is_one_host(
    remote: tuple[str, ...], initiable: bool
) -> None:
    assert Connection("gw", remote, ("net",)).can_initiate is initiable


def test_only_what_the_book_held_before_and_after_charon_answered_is_expected() -> None:
    e = recorded()
    (net, _) = e.children
    rekeyed = dataclasses.replace(e, children=(net, ("net2", 0x12345678)))
    other = dataclasses.replace(e, spis=(1, 2))
    # net2 was rekeyed while charon answered, and another IKE SA came: neither is expected
    assert steady([e], [rekeyed, other]) == [dataclasses.replace(e, children=(net,))]
    assert steady([e], []) == []

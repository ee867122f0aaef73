"""Which SAs are outbound: SA_DIR, local addresses, out-policy templates."""

from __future__ import annotations

import ipaddress

import pytest

from appliance import model as m

pytestmark = pytest.mark.unit

ip = ipaddress.ip_address
LOCAL, PEER = ip("192.0.2.1"), ip("192.0.2.2")


def sa(src: m.Address, dst: m.Address, spi: int, mode: int = 1, **kw: object) -> m.SadEntry:
    family = m.family_of(dst)
    return m.SadEntry(daddr=dst, saddr=src, spi=spi, family=family, mode=mode, reqid=1, **kw)  # type: ignore[arg-type]


def out_policy(*templates: m.Template, dst: str = "203.0.113.0", plen: int = 24) -> m.SpdEntry:
    selector = m.Selector(daddr=ip(dst), prefixlen_d=plen)
    return m.SpdEntry(selector=selector, dir=m.Direction.OUT, templates=templates)


def test_tunnel_template_destination_selects_the_outbound_sa_not_the_inbound_one() -> None:
    outbound, inbound = sa(LOCAL, PEER, 1), sa(PEER, LOCAL, 2)
    spd = [out_policy(m.Template(daddr=PEER, saddr=LOCAL, reqid=1, mode=1))]
    assert m.classify_outbound([outbound, inbound], spd) == [True, False]


def test_in_and_fwd_policies_do_not_make_sas_outbound() -> None:
    inbound = sa(PEER, LOCAL, 2)
    tmpl = m.Template(daddr=LOCAL, saddr=PEER, reqid=1, mode=1)
    spd = [
        m.SpdEntry(selector=m.Selector(), dir=m.Direction.IN, templates=(tmpl,)),
        m.SpdEntry(selector=m.Selector(), dir=m.Direction.FWD, templates=(tmpl,)),
    ]
    assert m.classify_outbound([inbound], spd) == [False]


def test_transport_template_without_destination_uses_the_selector() -> None:
    outbound, inbound = sa(LOCAL, PEER, 1, mode=0), sa(PEER, LOCAL, 2, mode=0)
    spd = [out_policy(m.Template(reqid=1, mode=0), dst=str(PEER), plen=32)]
    assert m.classify_outbound([outbound, inbound], spd) == [True, False]


def test_template_reqid_spi_and_mode_must_match() -> None:
    outbound = sa(LOCAL, PEER, 1)
    for template in (
        m.Template(daddr=PEER, reqid=2, mode=1),
        m.Template(daddr=PEER, reqid=1, spi=99, mode=1),
        m.Template(daddr=PEER, reqid=1, mode=0),
        m.Template(daddr=PEER, reqid=1, mode=1, proto=m.IPPROTO_AH),
    ):
        assert m.classify_outbound([outbound], [out_policy(template)]) == [False]


def test_local_address_makes_an_sa_outbound() -> None:
    six = sa(ip("2001:db8::1"), ip("2001:db8::2"), 3)
    assert m.classify_outbound([six, sa(PEER, LOCAL, 2)], [], [ip("2001:db8::1")]) == [True, False]


def test_sa_dir_attribute_wins() -> None:
    marked_in = sa(LOCAL, PEER, 1, sa_dir=m.SaDir.IN)
    marked_out = sa(PEER, LOCAL, 2, sa_dir=m.SaDir.OUT)
    assert m.classify_outbound([marked_in, marked_out], [], [LOCAL]) == [False, True]

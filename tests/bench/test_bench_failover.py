"""bench/failover.py: the SA pairs it installs, and how it reads ``ip xfrm ... count``."""

import ipaddress

import pytest

from appliance.errors import LabError
from appliance.model import Direction, SadEntry, SpdEntry
from bench import failover as fb

pytestmark = pytest.mark.unit

DOC_RANGES = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15")
]


def allowed(address: ipaddress.IPv4Address) -> bool:
    return any(address in net for net in DOC_RANGES)


def test_pairs_have_distinct_spis_peers_and_selectors_in_documentation_ranges() -> None:
    ops = fb.operations(300)
    sas = [e for op, e in ops if op == "add_sa"]
    policies = [e for op, e in ops if op == "add_policy"]
    assert all(isinstance(e, SadEntry) for e in sas) and len(sas) == 600
    assert all(isinstance(e, SpdEntry) for e in policies) and len(policies) == 900
    assert len({sa.spi for sa in sas}) == 600
    assert len({(p.dir, p.selector) for p in policies}) == 900  # no policy replaces another
    assert [p.dir for p in policies].count(Direction.OUT) == 300
    addresses = [a for sa in sas for a in (sa.saddr, sa.daddr)]
    addresses += [a for p in policies for a in (p.selector.saddr, p.selector.daddr)]
    assert all(allowed(a) for a in addresses)
    assert len({sa.daddr for sa in sas if sa.daddr != fb.LOCAL}) == 300
    # the SAs come before every policy, and the keys differ
    assert [op for op, _ in ops[:600]] == ["add_sa"] * 600
    assert len({sa.aead.key.data for sa in sas if sa.aead}) == 600


def test_policies_name_their_pair_s_sas() -> None:
    (sa_in, sa_out, out, inb, fwd) = (e for _, e in fb.pair_operations(fb.pair(7)))
    assert isinstance(out, SpdEntry) and isinstance(inb, SpdEntry) and isinstance(fwd, SpdEntry)
    assert isinstance(sa_in, SadEntry) and isinstance(sa_out, SadEntry)
    (t_out,) = out.templates
    assert (t_out.saddr, t_out.daddr, t_out.reqid) == (sa_out.saddr, sa_out.daddr, sa_out.reqid)
    for pol in (inb, fwd):
        (t_in,) = pol.templates
        assert (t_in.saddr, t_in.daddr, t_in.reqid) == (sa_in.saddr, sa_in.daddr, sa_in.reqid)
    assert inb.selector == fwd.selector != out.selector


def test_pair_and_operations_refuse_out_of_range() -> None:
    with pytest.raises(ValueError, match="pair index"):
        fb.pair(fb.MAX_PAIRS)
    with pytest.raises(ValueError, match="number of SA pairs"):
        fb.operations(0)
    assert allowed(fb.pair(fb.MAX_PAIRS - 1).peer) and allowed(fb.pair(fb.MAX_PAIRS - 1).remote)


def test_parse_counts_reads_the_spd_line_not_the_socket_line() -> None:
    sad = "\t SAD count 20000\n"
    spd = "\t SPD IN  10000 OUT 10000 FWD 10000 \n\t SPD IN  0 OUT 0 FWD 0 (Sock)\n"
    assert fb.parse_counts(sad, spd) == (20000, (10000, 10000, 10000))
    with pytest.raises(LabError, match="unexpected"):
        fb.parse_counts("", spd)


def test_a_failed_row_shows_its_reason_and_no_figures() -> None:
    line = fb.row_line(fb.Row("hot", 100, ok=False, error="gw2's kernel holds 3 SAs, not 200"))
    assert "FAILED: gw2's kernel holds 3 SAs" in line and " ms" not in line


def test_ip_batch_lines_hold_the_same_sas_and_policies_as_the_operations() -> None:
    lines = fb.ip_batch_lines(40)
    ops = fb.operations(40)
    assert len(lines) == len(ops) == 40 * 5
    states = [line for line in lines if line.startswith("xfrm state add")]
    policies = [line for line in lines if line.startswith("xfrm policy add")]
    assert lines == states + policies  # SAs before the policies that name them
    sas = [e for op, e in ops if op == "add_sa" and isinstance(e, SadEntry)]
    for sa in sas:
        (line,) = [s for s in states if f" spi {sa.spi:#x} " in s]
        assert f"src {sa.saddr} dst {sa.daddr} " in line and f" reqid {sa.reqid} " in line
        assert (" replay-window " in line) == (sa.daddr == fb.LOCAL)
    for p in (e for op, e in ops if op == "add_policy" and isinstance(e, SpdEntry)):
        sel = p.selector
        direction = p.dir.name.lower()
        src, dst = f"{sel.saddr}/{sel.prefixlen_s}", f"{sel.daddr}/{sel.prefixlen_d}"
        want = f"src {src} dst {dst} dir {direction}"
        assert sum(want in line for line in policies) == 1


def test_a_row_compares_outbound_open_with_its_floor() -> None:
    hot = fb.Row("hot", 10, ok=True, opened_ms=300.0, newae_floor_ms=100.0)
    assert (hot.floor_ms, hot.opened_vs_floor) == (100.0, 3.0)
    cold = fb.Row("cold", 10, ok=True, opened_ms=900.0, newae_floor_ms=100.0,
                  ip_batch_floor_ms=500.0)  # fmt: skip
    assert (cold.floor_ms, cold.opened_vs_floor) == (600.0, 1.5)
    assert fb.Row("cold", 10, newae_floor_ms=100.0).floor_ms is None  # no ip -batch measured

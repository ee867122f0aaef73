"""A static ESP tunnel from the client to the VIP holder carries ping (needs a kernel with ESP).

The SAs and policies are keyed here with iproute2's ``ip xfrm``, independent
of the project's own XFRM code, so this checks the lab itself: addressing,
routing and forwarding through the gateway that holds the VIP.
"""

import re
import secrets
import subprocess

import pytest

from netns_lab import CLIENT_PROTECTED, Lab
from netns_lab.plan import INSIDE, OUTSIDE, address_of, vip_address

pytestmark = pytest.mark.lab

AEAD = "rfc4106(gcm(aes))"
CLIENT = address_of("client", OUTSIDE)
VIP = vip_address(OUTSIDE)
SERVER = address_of("server", INSIDE)
PROTECTED = CLIENT_PROTECTED
INSIDE_NET = INSIDE.network


def xfrm(lab: Lab, host: str, *args: str, stats: bool = False) -> str:
    # `ip -n NS` (not Lab.exec) on purpose: the reference tool, run the usual way
    result = subprocess.run(
        ["ip", *(["-s"] if stats else []), "-n", lab.ns(host), "xfrm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # the arguments hold keys: report the verb and iproute2's message only
    assert result.returncode == 0, f"ip xfrm {' '.join(args[:2])} in {host}: {result.stderr}"
    return result.stdout


def add_sa(lab: Lab, host: str, src: str, dst: str, spi: int, key: str) -> None:
    xfrm(lab, host, "state", "add", "src", src, "dst", dst, "proto", "esp",
         "spi", f"0x{spi:08x}", "reqid", "1", "mode", "tunnel",
         "aead", AEAD, f"0x{key}", "128")  # fmt: skip


def add_policy(lab: Lab, host: str, sel_src: str, sel_dst: str, direction: str,
               tmpl_src: str, tmpl_dst: str) -> None:  # fmt: skip
    xfrm(lab, host, "policy", "add", "src", sel_src, "dst", sel_dst, "dir", direction,
         "tmpl", "src", tmpl_src, "dst", tmpl_dst, "proto", "esp", "reqid", "1",
         "mode", "tunnel")  # fmt: skip


def packets(lab: Lab, host: str, spi: int) -> int:
    """The packet counter of the SA with ``spi`` from `ip -s xfrm state`."""
    text = xfrm(lab, host, "state", stats=True)
    for block in re.split(r"\n(?=src )", text):
        if re.search(rf"spi 0x{spi:08x}\b", block):
            match = re.search(r"lifetime current:\s*\n\s*\d+\(bytes\), (\d+)\(packets\)", block)
            assert match, f"no counters for spi 0x{spi:08x} in {host}"
            return int(match.group(1))
    raise AssertionError(f"no SA with spi 0x{spi:08x} in {host}")


def test_esp_tunnel_from_client_to_vip_holder_carries_ping(require_root: None) -> None:
    # advert_int 1 s: VRRP under TCG emulation needs slack against false failovers.
    # The notify hooks (a Python start-up each) take minutes in the VM; this
    # test needs only the VIPs, so it does not wait for their records.
    with Lab.create(advert_int=1.0, wait_notify=False) as lab:
        gw = lab.vip_holder()
        assert gw == "gw1"
        spi_in, spi_out = (secrets.randbelow(0xFFFF0000) + 0x100 for _ in range(2))
        key_in, key_out = secrets.token_hex(20), secrets.token_hex(20)  # 16-byte key + salt

        # client -> gateway (spi_in) and gateway -> client (spi_out)
        for host in ("client", gw):
            add_sa(lab, host, CLIENT, VIP, spi_in, key_in)
            add_sa(lab, host, VIP, CLIENT, spi_out, key_out)
        add_policy(lab, "client", PROTECTED, INSIDE_NET, "out", CLIENT, VIP)
        add_policy(lab, "client", INSIDE_NET, PROTECTED, "in", VIP, CLIENT)
        add_policy(lab, gw, PROTECTED, INSIDE_NET, "in", CLIENT, VIP)
        add_policy(lab, gw, PROTECTED, INSIDE_NET, "fwd", CLIENT, VIP)
        add_policy(lab, gw, INSIDE_NET, PROTECTED, "out", VIP, CLIENT)

        ip_protected = PROTECTED.split("/")[0]
        ping = lab.exec(
            "client", ["ping", "-c", "3", "-W", "5", "-I", ip_protected, SERVER], check=False
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert "3 received" in ping.stdout

        # the echoes went through ESP both ways, on both ends of the tunnel
        assert packets(lab, "client", spi_in) >= 3
        assert packets(lab, "client", spi_out) >= 3
        assert packets(lab, gw, spi_in) >= 3
        assert packets(lab, gw, spi_out) >= 3

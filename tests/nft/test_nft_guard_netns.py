"""The guard on the host kernel: atomic apply/show/remove, and what it lets through.

The nft binary reads the state back as an independent reference; traffic
runs between namespaces on a bridge (see conftest).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
from typing import Any

import pytest
from nft_lab import (
    GW4,
    PEER4,
    PEER6,
    STRANGER4,
    VIP4,
    VIP6,
    Lab,
    counter_packets,
    esp_packet,
    nft,
    nft_json,
    receive_all,
)

from appliance.errors import KernelError, UsageError
from appliance.nft import (
    add_spis,
    apply_guard,
    guard_status,
    list_spis,
    parse_nft_section,
    remove_guard,
    remove_spis,
    render_ruleset,
)
from appliance.nft.libnft import run_batch

pytestmark = pytest.mark.netns

SYNC_PORT = 4601
CONFIG = parse_nft_section(
    {
        "vips": [VIP4, VIP6],
        "peers": [PEER4, PEER6],
        "store": ["198.51.100.5"],
        "sync_port": SYNC_PORT,
    }
)

OTHER_TABLES = """
table inet filter {
    counter seen { }
    set blocked { type ipv4_addr; elements = { 203.0.113.7 } }
    chain input {
        type filter hook input priority 0; policy accept;
        ct state established,related counter accept
        ip saddr @blocked counter drop
        udp dport 9999 counter name seen drop
    }
}
table ip nat {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        udp dport 8080 counter dnat to 192.0.2.1:80
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "eth0" counter masquerade
    }
}
"""


def other_tables(netns: str) -> dict[str, str]:
    return {
        table: nft(netns, "-j", "list", "table", *table.split())
        for table in ("inet filter", "ip nat")
    }


def our_table(netns: str) -> str:
    return nft(netns, "-j", "list", "table", "inet", "ipsec_ha")


def table_names(netns: str) -> set[str]:
    return {
        f"{item['table']['family']} {item['table']['name']}"
        for item in nft_json(netns, "list", "tables")
        if "table" in item
    }


def test_apply_show_remove_leave_other_tables_byte_identical(netns_name: str) -> None:
    nft(netns_name, "-f", "-", stdin=OTHER_TABLES)
    before = other_tables(netns_name)

    assert apply_guard(netns_name, CONFIG) is True
    assert table_names(netns_name) == {"inet filter", "ip nat", "inet ipsec_ha"}
    assert other_tables(netns_name) == before

    assert apply_guard(netns_name, CONFIG) is False  # idempotent: an update
    add_spis(netns_name, [0x1001])
    status = guard_status(netns_name)
    assert status.present
    assert status.sets["vips4"] == [VIP4]
    assert status.sets["cluster4"] == [PEER4, "198.51.100.5"]
    assert status.held_spis == [0x1001]
    assert f"udp dport {SYNC_PORT} ip saddr @cluster4" in status.ruleset_text
    assert other_tables(netns_name) == before

    assert remove_guard(netns_name) is True
    assert table_names(netns_name) == {"inet filter", "ip nat"}
    assert other_tables(netns_name) == before
    assert guard_status(netns_name).present is False

    assert remove_guard(netns_name) is False  # absent: not an error
    assert other_tables(netns_name) == before


def test_reapply_keeps_counters_and_held_spis_and_replaces_addresses(netns_name: str) -> None:
    apply_guard(netns_name, CONFIG)
    add_spis(netns_name, [0x2002, 0x3003])
    nft(netns_name, "reset", "counters")  # harmless; proves counters are ours to read
    apply_guard(netns_name, parse_nft_section({"vips": ["192.0.2.11"], "peers": [PEER4]}))
    status = guard_status(netns_name)
    assert status.held_spis == [0x2002, 0x3003]
    assert status.sets == {
        "vips4": ["192.0.2.11"],
        "vips6": [],
        "cluster4": [PEER4],
        "cluster6": [],
    }
    assert "ip6 daddr" not in status.ruleset_text


def test_rejected_batch_leaves_the_previous_table_exactly(netns_name: str) -> None:
    nft(netns_name, "-f", "-", stdin=OTHER_TABLES)
    apply_guard(netns_name, CONFIG)
    add_spis(netns_name, [0x4004])
    ours, others = our_table(netns_name), other_tables(netns_name)
    new_config = parse_nft_section({"vips": ["192.0.2.99"], "peers": ["192.0.2.98"]})

    # Rejected by the kernel, after the flushes and adds earlier in the same batch.
    duplicate = render_ruleset(new_config) + "create element inet ipsec_ha vips4 { 192.0.2.99 }\n"
    with pytest.raises(
        KernelError, match="nothing was changed: Could not process rule: File exists"
    ):
        run_batch(netns_name, duplicate, "test batch")
    assert our_table(netns_name) == ours
    assert other_tables(netns_name) == others

    # Rejected by libnftables' evaluation: an element that is no address.
    invalid = render_ruleset(new_config) + "add element inet ipsec_ha vips4 { 192.0.2.300 }\n"
    with pytest.raises(KernelError, match="nothing was changed"):
        run_batch(netns_name, invalid, "test batch")
    assert our_table(netns_name) == ours
    assert other_tables(netns_name) == others


def test_spi_set_add_remove_list(netns_name: str) -> None:
    with pytest.raises(KernelError, match="absent"):
        add_spis(netns_name, [0x100])
    apply_guard(netns_name, CONFIG)
    assert list_spis(netns_name) == []
    add_spis(netns_name, [0x300, 0x100, 0xFFFFFFFF])
    add_spis(netns_name, [0x100])  # already held: no error, no duplicate
    assert list_spis(netns_name) == [0x100, 0x300, 0xFFFFFFFF]
    remove_spis(netns_name, [0x300, 0x999])  # 0x999 was never held: ignored
    assert list_spis(netns_name) == [0x100, 0xFFFFFFFF]
    reference = nft_json(netns_name, "list", "set", "inet", "ipsec_ha", "held_spis")
    assert sorted(next(i["set"] for i in reference if "set" in i)["elem"]) == [0x100, 0xFFFFFFFF]
    with pytest.raises(UsageError):
        add_spis(netns_name, [0x500, 0])
    assert list_spis(netns_name) == [0x100, 0xFFFFFFFF]


def test_missing_namespace_is_a_clear_error() -> None:
    with pytest.raises(KernelError, match="does not exist"):
        guard_status("iha-0000-never-created")


# --- traffic -------------------------------------------------------------------------------


def send_udp(lab: Lab, netns: str, family: int, to: tuple[Any, ...], payload: bytes) -> None:
    with lab.socket_in(netns, family, socket.SOCK_DGRAM) as sock:
        sock.sendto(payload, to)


def send_raw(lab: Lab, netns: str, family: int, proto: int, to: str, payload: bytes) -> None:
    with lab.socket_in(netns, family, socket.SOCK_RAW, proto) as sock:
        sock.sendto(payload, (to, 0))


def test_sync_port_only_from_the_cluster(lab: Lab) -> None:
    with lab.socket_in(lab.gw, socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("0.0.0.0", SYNC_PORT))
        # Without the guard the stranger gets through: the topology itself drops nothing.
        send_udp(lab, lab.stranger, socket.AF_INET, (GW4, SYNC_PORT), b"stranger-before")
        assert receive_all(listener, 2.0) == [b"stranger-before"]

        apply_guard(lab.gw, CONFIG)
        send_udp(lab, lab.stranger, socket.AF_INET, (GW4, SYNC_PORT), b"stranger")
        send_udp(lab, lab.peer, socket.AF_INET, (GW4, SYNC_PORT), b"peer")
        assert receive_all(listener, 2.0) == [b"peer"]
    assert counter_packets(lab.gw, "sync_dropped") == 1
    assert counter_packets(lab.gw, "sync_accepted") == 1
    categories = guard_status(lab.gw).categories()
    assert categories["sync"] == {"accepted": 1, "dropped": 1}


def test_ha_relay_keeps_the_ha_plugins_port_to_loopback(lab: Lab) -> None:
    relay = dataclasses.replace(CONFIG, ha_relay=True)
    with lab.socket_in(lab.gw, socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("0.0.0.0", 4510))
        apply_guard(lab.gw, CONFIG)  # without ha_relay the port is not the guard's business
        send_udp(lab, lab.peer, socket.AF_INET, (GW4, 4510), b"peer-before")
        assert receive_all(listener, 2.0) == [b"peer-before"]

        apply_guard(lab.gw, relay)
        send_udp(lab, lab.peer, socket.AF_INET, (GW4, 4510), b"peer")
        send_udp(lab, lab.stranger, socket.AF_INET, (VIP4, 4510), b"stranger")
        send_udp(lab, lab.gw, socket.AF_INET, ("127.0.0.1", 4510), b"charon")
        assert receive_all(listener, 2.0) == [b"charon"]
    assert counter_packets(lab.gw, "ha_plugin_dropped") == 2


def test_esp_reaches_the_vip_and_nothing_else(lab: Lab) -> None:
    apply_guard(lab.gw, CONFIG)
    with lab.socket_in(lab.gw, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ESP) as esp4:
        send_raw(lab, lab.stranger, socket.AF_INET, socket.IPPROTO_ESP, GW4, esp_packet(7, b"host"))
        send_raw(lab, lab.stranger, socket.AF_INET, socket.IPPROTO_ESP, VIP4, esp_packet(7, b"vip"))
        received = receive_all(esp4, 2.0)
    # A raw IPv4 socket sees the IP header too; the payload ends the packet.
    assert [packet[-32:] for packet in received] == [esp_packet(7, b"vip")]
    assert counter_packets(lab.gw, "esp_accepted") == 1
    assert counter_packets(lab.gw, "esp_dropped") == 1

    with lab.socket_in(lab.gw, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ESP) as esp6:
        send_raw(lab, lab.peer, socket.AF_INET6, socket.IPPROTO_ESP, VIP6, esp_packet(9, b"v6"))
        assert receive_all(esp6, 2.0) == [esp_packet(9, b"v6")]
    assert counter_packets(lab.gw, "esp_accepted") == 2


def test_ike_and_esp_in_udp_to_the_vip_from_anyone(lab: Lab) -> None:
    apply_guard(lab.gw, CONFIG)
    ike = b"\x00" * 4 + b"ike-over-4500"
    esp_in_udp = esp_packet(0x1234, b"esp-in-udp")
    with (
        lab.socket_in(lab.gw, socket.AF_INET, socket.SOCK_DGRAM) as port500,
        lab.socket_in(lab.gw, socket.AF_INET, socket.SOCK_DGRAM) as port4500,
    ):
        port500.bind(("0.0.0.0", 500))
        port4500.bind(("0.0.0.0", 4500))
        send_udp(lab, lab.stranger, socket.AF_INET, (VIP4, 500), b"ike-500")
        send_udp(lab, lab.stranger, socket.AF_INET, (GW4, 500), b"ike-500-host")
        send_udp(lab, lab.stranger, socket.AF_INET, (VIP4, 4500), ike)
        send_udp(lab, lab.stranger, socket.AF_INET, (VIP4, 4500), esp_in_udp)
        send_udp(lab, lab.stranger, socket.AF_INET, (GW4, 4500), ike)
        send_udp(lab, lab.stranger, socket.AF_INET, (GW4, 4500), esp_in_udp)
        assert receive_all(port500, 2.0) == [b"ike-500"]
        assert receive_all(port4500, 1.0) == [ike, esp_in_udp]
    assert counter_packets(lab.gw, "ike_accepted") == 2
    assert counter_packets(lab.gw, "esp_in_udp_accepted") == 1
    assert counter_packets(lab.gw, "ike_dropped") == 2
    assert counter_packets(lab.gw, "esp_in_udp_dropped") == 1


def test_vrrp_only_from_the_cluster(lab: Lab) -> None:
    apply_guard(lab.gw, CONFIG)
    vrrp = bytes([0x31, 1, 100, 1, 0, 100, 0, 0]) + socket.inet_aton(VIP4)
    with lab.socket_in(lab.gw, socket.AF_INET, socket.SOCK_RAW, 112) as listener:
        send_raw(lab, lab.stranger, socket.AF_INET, 112, GW4, vrrp)
        send_raw(lab, lab.peer, socket.AF_INET, 112, GW4, vrrp)
        received = receive_all(listener, 2.0)
    assert len(received) == 1
    assert received[0][12:16] == socket.inet_aton(PEER4)  # the IPv4 source address
    assert counter_packets(lab.gw, "vrrp_accepted") == 1
    assert counter_packets(lab.gw, "vrrp_dropped") == 1
    assert STRANGER4 not in guard_status(lab.gw).sets["cluster4"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "nft", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_apply_show_remove_round_trip(netns_name: str) -> None:
    applied = cli("apply", "--netns", netns_name, "--vip", VIP4, "--peer", PEER4, "--json")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["created"] is True
    again = cli("apply", "--netns", netns_name, "--vip", VIP4, "--peer", PEER4)
    assert again.stdout.strip() == f"table inet ipsec_ha in netns {netns_name}: updated"

    shown = json.loads(cli("show", "--netns", netns_name, "--json").stdout)
    assert shown["present"] is True
    assert shown["sets"]["vips4"] == [VIP4]
    assert shown["categories"]["sync"] == {"accepted": 0, "dropped": 0}
    text = cli("show", "--netns", netns_name).stdout
    assert "udp dport 4501 ip saddr @cluster4" in text

    assert cli("spis", "--netns", netns_name, "--add", "0xc0ffee").stdout.strip() == "0x00c0ffee"

    assert cli("remove", "--netns", netns_name).stdout.strip() == (
        f"table inet ipsec_ha in netns {netns_name}: removed"
    )
    absent = cli("remove", "--netns", netns_name)
    assert absent.returncode == 0
    assert "already absent" in absent.stdout
    assert "absent" in cli("show", "--netns", netns_name).stdout
    assert table_names(netns_name) == set()

    missing = cli("show", "--netns", "iha-0000-never-created")
    assert missing.returncode == 1
    assert missing.stderr.startswith("ipsec-ha: error: network namespace")

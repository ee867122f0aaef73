"""The lab's reading of charon: a DPD is answered only with the response to it; the IKE SAs
swanctl lists; the connections the lab configures."""

from __future__ import annotations

from pathlib import Path

import pytest

from netns_lab.charon import Charons, parse_ike_sas, swanctl_connections

pytestmark = pytest.mark.unit

# as charon 5.9.8 logs an IKEv2 DPD at the lab's level (default = 1)
DPD = """\
09[IKE] sending DPD request
09[ENC] generating INFORMATIONAL request 7 [ ]
09[NET] sending packet: from 192.0.2.20[4500] to 192.0.2.1[4500] (80 bytes)
12[NET] received packet: from 192.0.2.1[4500] to 192.0.2.20[4500] (80 bytes)
12[ENC] parsed INFORMATIONAL response 7 [ ]
"""


def charons_with_log(tmp_path: Path, text: str) -> Charons:
    charons = Charons.__new__(Charons)  # no lab: only the log is read
    charons.folder = tmp_path
    (tmp_path / "client-charon.log").write_text(text)
    return charons


def test_a_dpd_counts_once_its_response_is_parsed(tmp_path: Path) -> None:
    assert charons_with_log(tmp_path, DPD).dpd_answered("client", 0) is True
    unanswered = DPD.split("12[NET]")[0]
    assert charons_with_log(tmp_path, unanswered).dpd_answered("client", 0) is False
    # the response to another request (a rekey's) is not the DPD's
    other = DPD.replace(
        "parsed INFORMATIONAL response 7 [ ]", "parsed INFORMATIONAL response 6 [ ]"
    )
    assert charons_with_log(tmp_path, other).dpd_answered("client", 0) is False
    # only what the log holds past the mark
    assert charons_with_log(tmp_path, DPD).dpd_answered("client", 5) is False


# as swanctl 5.9.8 lists a client's two IKE SAs (trimmed to the lines the lab reads)
LIST_SAS = """\
vip: #1, ESTABLISHED, IKEv2, 5d7c7a1b2c3d4e5f_i* 8a9b0c1d2e3f4a5b_r
  local  'client.lab.example' @ 192.0.2.10[4500]
  net: #1, reqid 1, INSTALLED, TUNNEL, ESP:AES_GCM_16-128
vip2: #2, CONNECTING, IKEv2, 0123456789abcdef_i* 0000000000000000_r
"""


def test_the_ike_sas_listed_by_swanctl_and_by_connection() -> None:
    everything = [
        ("ESTABLISHED", "5d7c7a1b2c3d4e5f_8a9b0c1d2e3f4a5b"),
        ("CONNECTING", "0123456789abcdef_0000000000000000"),
    ]
    assert parse_ike_sas(LIST_SAS) == everything
    assert parse_ike_sas(LIST_SAS, "vip2") == everything[1:]
    # a CHILD SA's line ("net: #1, reqid ...") is not an IKE SA
    assert parse_ike_sas(LIST_SAS, "net") == []
    assert parse_ike_sas("") == []


def test_the_gateway_answers_both_tunnels_and_the_second_never_sends_initial_contact() -> None:
    gateway = swanctl_connections(True, "192.0.2.1", "192.0.2.10")
    assert gateway.count("children {") == 1 and "net {" in gateway and "net2 {" in gateway
    assert "remote_ts = 203.0.113.11/32" in gateway and "unique" not in gateway
    client = swanctl_connections(False, "192.0.2.10", "192.0.2.1")
    first, second = client.split("    vip2 {")
    assert "dpd_delay" in first and "unique" not in first
    assert "unique = never" in second and "local_ts = 203.0.113.11/32" in second
    # every inbound SA with the wide window, the gateways' too
    assert gateway.count("replay_window = 4096") == 2 and client.count("replay_window = 4096") == 2

"""bench/ike_failover.py: the configurations it writes, its ping script and its rows (pure)."""

from __future__ import annotations

import pytest

from bench import ike_failover as bi

pytestmark = pytest.mark.unit


def test_each_tunnel_has_its_own_protected_address_and_none_past_the_bound() -> None:
    assert str(bi.protected(0)) == "198.19.0.1"
    assert str(bi.protected(255)) == "198.19.1.0"
    with pytest.raises(ValueError, match=r"outside 0\.\.999"):
        bi.protected(bi.MAX_TUNNELS)


@pytest.mark.parametrize("way", bi.WAYS)
def test_the_client_sets_up_one_ike_sa_per_tunnel(way: str) -> None:
    text = bi.client_connections(3, way, "192.0.2.10", "192.0.2.1", "198.51.100.0/24")
    for i in range(3):
        assert f"    t{i} {{" in text and f"            c{i} {{" in text
        assert f"local_ts = 198.19.0.{i + 1}/32" in text
    # each its own IKE SA: charon puts CHILD SAs of equal configurations into one
    assert [f"id = t{i}.client.lab.example" in text for i in range(3)] == [True] * 3
    assert text.count("keyingtries = 0") == 3
    # only without sync does the client need DPD to find out, and then it starts over
    assert text.count("dpd_action = restart") == (3 if way == "none" else 0)


def test_the_gateway_narrows_one_child_sa_to_each_client_proposal() -> None:
    text = bi.gateway_connections("192.0.2.1", "192.0.2.10", "198.51.100.0/24")
    assert text.count("children {") == 1 and "remote_ts = 198.19.0.0/16" in text
    assert "id = %any" in text


def test_the_ha_plugin_talks_to_the_daemon_or_to_the_other_gateway() -> None:
    assert "remote = 127.0.0.2" in bi.ha_section("ipsec-ha", "gw1")
    assert bi.ha_section("ipsec-ha-hot", "gw2") == bi.ha_section("ipsec-ha", "gw2")
    assert bi.MODES == {"ipsec-ha": "cold", "ipsec-ha-hot": "hot"}
    peer = bi.ha_section("ha-plugin", "gw1")
    assert "local = 198.51.100.2" in peer and "remote = 198.51.100.3" in peer
    assert "local = 198.51.100.3" in bi.ha_section("ha-plugin", "gw2")
    assert bi.ha_section("none", "gw1") == ""


def test_the_ping_script_pings_from_every_source_and_its_output_is_read() -> None:
    script = bi.ping_script(["198.19.0.1", "198.19.0.2"], "198.51.100.10", 3)
    assert script.count("ping -n -q -c 3") == 2 and "-I 198.19.0.2 198.51.100.10" in script
    assert script.rstrip().endswith("wait")
    # in batches: a wait after every PING_BATCH sources
    many = bi.ping_script([f"198.19.0.{i}" for i in range(1, 26)], "198.51.100.10", 3)
    assert many.count("\nwait\n") == 3 and many.count("ping -n") == 25
    printed = "198.19.0.1 3 received\n198.19.0.2 0 received\nnoise\n"
    assert bi.parse_replies(printed) == {"198.19.0.1": 3, "198.19.0.2": 0}


def test_a_failed_way_says_so_in_its_row() -> None:
    row = bi.Row("none", 10, error="gw2's charon to hold 10 IKE SAs ESTABLISHED: timed out")
    assert "FAILED: gw2's charon" in bi.row_line(row)
    done = bi.Row("ipsec-ha", 10, vip_s=3.2, master_done_s=1.5, ike_up_s=2.0,
                  kill_ike_up_s=5.2, same_ike_sas=10, replay_drops=0, pings_after=30)  # fmt: skip
    line = bi.row_line(done)
    assert "3.20 s" in line and "30/30" in line


def test_the_bench_refuses_a_tunnel_count_it_cannot_address(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        bi.main(["--n", "0"])
    assert "1 to 1000 tunnels" in capsys.readouterr().err


def test_the_safety_net_cell_names_what_the_check_found() -> None:
    safety_net_cell = bi.safety_net_cell
    clean = {"kept": 100, "replaced": 0, "not_established": 0, "children_missing": 0,
             "missing": 0, "to_initiate": 0, "lost": 0, "initiated": 0,
             "initiate_failed": 0, "error": None}  # fmt: skip
    assert safety_net_cell(clean) == "kept 100"
    some = {**clean, "kept": 97, "missing": 3, "to_initiate": 3, "initiated": 2,
            "initiate_failed": 1}  # fmt: skip
    assert safety_net_cell(some) == (
        "kept 97, missing 3, to initiate 3, initiated 2, initiate failed 1"
    )
    refused = "vici: connection refused"
    assert safety_net_cell({"error": refused}) == f"error: {refused}"
    assert safety_net_cell(None) == "-"
    assert safety_net_cell({**clean, "kept": 0}) == "nothing held"


def test_the_safety_net_checks_are_read_from_a_status_file() -> None:
    assert bi.safety_net_checks({"ike": {"safety_net": {"checks": 2, "last": None}}}) == 2
    assert bi.safety_net_checks({"role": "standby"}) == 0  # no [ike]
    assert bi.safety_net_checks(None) == 0  # no status file yet

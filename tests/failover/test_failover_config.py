"""The daemon's TOML configuration: every bad key named, nothing guessed."""

import os
from pathlib import Path

import pytest

from appliance.errors import ConfigError
from appliance.failover.config import load_daemon_config
from appliance.failover.gate_lease import lease_addresses
from appliance.failover.seqjump import compute_jump
from appliance.failover.transitions import StandbyMode
from appliance.metrics.config import MetricsConfig

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "daemon.toml"


@pytest.fixture
def psk(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.psk"
    path.write_text("ab" * 32 + "\n")
    os.chmod(path, 0o600)
    return path


def write(tmp_path: Path, psk: Path, body: str = "", **tables: str) -> Path:
    node = tables.get("node", 'id = "gw1"\nserver_id = "192.0.2.1"\nnode_index = 0')
    store = tables.get("store", f'servers = ["198.51.100.10"]\npsk_file = "{psk}"')
    path = tmp_path / "daemon.toml"
    path.write_text(f"[node]\n{node}\n[store]\n{store}\n{body}")
    return path


def test_minimal_config_takes_the_documented_defaults(tmp_path: Path, psk: Path) -> None:
    cfg = load_daemon_config(write(tmp_path, psk))
    assert cfg.node.server_id == "192.0.2.1"
    assert cfg.store.servers == ("198.51.100.10",)
    assert cfg.store.port == 4501
    assert cfg.store.max_datagram == 1400
    assert cfg.failover.mode is StandbyMode.COLD
    assert cfg.netns is None
    assert cfg.sync.replay_seq_thresh == 1000
    assert cfg.oseq_jump == cfg.computed_jump == compute_jump(200_000, 1000, 0.5, 2.0, 0.12)


def test_example_file_parses_once_its_psk_exists(tmp_path: Path, psk: Path) -> None:
    text = EXAMPLE.read_text().replace("/etc/ipsec-ha/cluster.psk", str(psk))
    path = tmp_path / "example.toml"
    path.write_text(text)
    cfg = load_daemon_config(path)
    assert cfg.node.id == "gw1"
    assert cfg.sync.pipeline_latency_s == pytest.approx(0.12)


def test_full_config(tmp_path: Path, psk: Path) -> None:
    body = """
[sync]
replay_seq_thresh = 0
replay_timer_ms = 200
coalesce_ms = 0
store_rtt_ms = 0
max_pps_per_sa = 1000
safety_factor = 1.5
[failover]
mode = "hot"
notify_timeout_s = 3
oseq_jump = 5000
[xfrm]
netns = "iha-gw1"
"""
    cfg = load_daemon_config(write(tmp_path, psk, body))
    assert cfg.failover.mode is StandbyMode.HOT
    assert cfg.computed_jump == 300  # 1000 pps * 0.2 s * 1.5
    assert cfg.oseq_jump == 5000
    assert cfg.netns == "iha-gw1"
    assert cfg.failover.notify_timeout_s == 3.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[sync]\nmax_pps_per_sa = 0\n", r"\[sync\]\.max_pps_per_sa: must be"),
        ("[sync]\nreplay_timer_ms = 150\n", r"\[sync\]\.replay_timer_ms: must be .*multiple"),
        ("[sync]\nsafety_factor = 0.5\n", r"\[sync\]\.safety_factor"),
        ("[sync]\nreplay_seq_thresh = -1\n", r"\[sync\]\.replay_seq_thresh"),
        (
            "[sync]\nreplay_seq_thresh = 0\nreplay_timer_ms = 0\n",
            r"\[sync\]\.replay_timer_ms: must not be 0",
        ),
        ("[sync]\ntypo = 1\n", r"\[sync\]\.typo: unknown key"),
        ('[failover]\nmode = "warm"\n', r"\[failover\]\.mode: must be \"hot\" or \"cold\""),
        ("[failover]\noseq_jump = 10\n", r"\[failover\]\.oseq_jump: 10 is below"),
        ("[failover]\nnotify_timeout_s = 0\n", r"\[failover\]\.notify_timeout_s"),
        ('[xfrm]\nnetns = "a/b"\n', r"\[xfrm\]\.netns"),
        ("[extra]\n", r"\[extra\]: unknown table"),
        (
            "[sync]\nmax_pps_per_sa = 100000000\nreplay_seq_thresh = 0\nreplay_timer_ms = 60000\n",
            r"\[sync\]\.max_pps_per_sa: .*2\^31",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, psk: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_daemon_config(write(tmp_path, psk, body))


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"node": 'id = "gw1"\nserver_id = "192.0.2.1"'}, r"\[node\]\.node_index: is required"),
        ({"node": 'id = "gw 1"\nserver_id = "x"\nnode_index = 0'}, r"\[node\]\.id: must be"),
        ({"node": 'id = "a"\nserver_id = "b"\nnode_index = 16'}, r"\[node\]\.node_index"),
        ({"store": 'servers = []\npsk_file = "/x"'}, r"\[store\]\.servers: must be"),
        ({"store": 'servers = ["1.2.3"]\npsk_file = "/x"'}, r"\[store\]\.servers"),
        ({"store": 'servers = ["192.0.2.9"]\npsk_file = "rel"'}, r"\[store\]\.psk_file: must"),
        ({"store": 'servers = ["192.0.2.9"]'}, r"\[store\]\.psk_file: is required"),
        (
            {"store": 'servers = ["192.0.2.9"]\npsk_file = "/x"\nmax_datagram = 70000'},
            r"\[store\]\.max_datagram: must be an integer 576\.\.65507",
        ),
    ],
)
def test_bad_node_and_store_values_name_the_key(
    tmp_path: Path, psk: Path, tables: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_daemon_config(write(tmp_path, psk, **tables))


def test_readable_psk_is_refused_with_chmod_advice(tmp_path: Path, psk: Path) -> None:
    os.chmod(psk, 0o640)
    with pytest.raises(ConfigError, match=r"\[store\]\.psk_file: .*chmod 600"):
        load_daemon_config(write(tmp_path, psk))


def test_missing_psk_is_refused(tmp_path: Path, psk: Path) -> None:
    config = write(tmp_path, psk)
    psk.unlink()
    with pytest.raises(ConfigError, match=r"\[store\]\.psk_file: .*cannot open"):
        load_daemon_config(config)


def test_missing_table_and_bad_toml(tmp_path: Path, psk: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text('[node]\nid = "a"\nserver_id = "b"\nnode_index = 1\n')
    with pytest.raises(ConfigError, match=r"\[store\]: table is required"):
        load_daemon_config(path)
    path.write_text("[node\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_daemon_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_daemon_config(tmp_path / "missing.toml")


def test_spi_table_gives_this_nodes_share_of_the_spi_space(tmp_path: Path, psk: Path) -> None:
    cfg = load_daemon_config(write(tmp_path, psk, "[spi]\nnodes = 2\n"))
    assert cfg.spi_range is not None
    assert (cfg.spi_range.spi_min, cfg.spi_range.spi_max) == (0x100, 0x8000007F)
    assert load_daemon_config(write(tmp_path, psk)).spi_range is None


def test_bad_spi_value_names_the_key(tmp_path: Path, psk: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[spi\]\.spi_min: must be an SPI"):
        load_daemon_config(write(tmp_path, psk, "[spi]\nspi_min = -1\nspi_max = 0x200\n"))


def test_metrics_are_off_without_the_table_and_on_loopback_with_an_empty_one(
    tmp_path: Path, psk: Path
) -> None:
    cfg = load_daemon_config(write(tmp_path, psk))
    assert cfg.metrics is None
    assert cfg.failover.health_interval_s == 1.0 and cfg.failover.ready_max_lag_s == 10.0
    assert cfg.failover.gate == "policy"
    assert (
        load_daemon_config(write(tmp_path, psk, '[failover]\ngate = "nft"\n')).failover.gate
        == "nft"
    )
    assert load_daemon_config(write(tmp_path, psk, "[metrics]\n")).metrics == MetricsConfig(
        ("127.0.0.1", 9641)
    )


@pytest.mark.parametrize(
    ("listen", "expected"),
    [('"0.0.0.0:9100"', ("0.0.0.0", 9100)), ('"[::1]:9641"', ("::1", 9641)),
     ('"[2001:db8::5]:80"', ("2001:db8::5", 80))],
)  # fmt: skip
def test_metrics_listen_takes_any_ip_literal(
    tmp_path: Path, psk: Path, listen: str, expected: tuple[str, int]
) -> None:
    cfg = load_daemon_config(write(tmp_path, psk, f"[metrics]\nlisten = {listen}\n"))
    assert cfg.metrics == MetricsConfig(expected)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[metrics]\nlisten = "localhost:9641"\n', r"\[metrics\]\.listen: must be"),
        ('[metrics]\nlisten = "127.0.0.1"\n', r"\[metrics\]\.listen: must be"),
        ('[metrics]\nlisten = "127.0.0.1:0"\n', r"\[metrics\]\.listen: must be"),
        ('[metrics]\nlisten = "::1:9641"\n', r"\[metrics\]\.listen: must be"),
        ("[metrics]\nlisten = 9641\n", r"\[metrics\]\.listen: must be"),
        ("[metrics]\nport = 9641\n", r"\[metrics\]\.port: unknown key"),
        ("[failover]\nhealth_interval_s = 0.05\n", r"\[failover\]\.health_interval_s: must be"),
        ("[failover]\nhealth_interval_s = 61\n", r"\[failover\]\.health_interval_s: must be"),
        ("[failover]\nready_max_lag_s = 0\n", r"\[failover\]\.ready_max_lag_s: must be"),
        ("[failover]\nready_max_lag_s = 3601\n", r"\[failover\]\.ready_max_lag_s: must be"),
        ('[failover]\ngate = "nftables"\n', r'\[failover\]\.gate: must be "policy" or "nft"'),
        ('[failover]\ngate = "nft"\ngate_lease_s = -1\n', r"\.gate_lease_s: must be seconds"),
        ('[failover]\ngate = "nft"\ngate_lease_s = 61\n', r"\.gate_lease_s: must be seconds"),
        ('[failover]\ngate = "nft"\ngate_lease_s = "2"\n', r"\.gate_lease_s: must be seconds"),
        ("[failover]\ngate_lease_s = 2\n", r'\.gate_lease_s: applies to gate = "nft" only'),
    ],
)
def test_bad_metrics_and_health_values_name_the_key(
    tmp_path: Path, psk: Path, body: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_daemon_config(write(tmp_path, psk, body))


IKE_STORE = 'servers = ["198.51.100.10"]\npsk_file = "{psk}"\nmax_datagram = 65000'


def test_ike_table_relays_strongswan_on_loopback(tmp_path: Path, psk: Path) -> None:
    assert load_daemon_config(write(tmp_path, psk)).ike is None
    body = IKE_STORE_ONLY
    store = IKE_STORE.format(psk=psk)
    ike = load_daemon_config(write(tmp_path, psk, body, store=store)).ike
    assert ike is not None and ike.daemon == "strongswan" and ike.feed is False
    assert (str(ike.addresses.relay), str(ike.addresses.charon)) == ("127.0.0.2", "127.0.0.1")
    assert ike.addresses.port == ike.addresses.charon_port == 4510


IKE_FEED = '[ike]\ndaemon = "strongswan"\nrelay = "127.0.0.2"\ncharon = "127.0.0.1"\n'
IKE_STORE_ONLY = IKE_FEED + "feed = false\n"
NFT_GATE = '[nft]\nvips = ["192.0.2.10"]\nha_relay = true\n'


def test_ike_feeds_charon_by_default_which_needs_the_nft_gate(tmp_path: Path, psk: Path) -> None:
    store = IKE_STORE.format(psk=psk)
    with pytest.raises(
        ConfigError, match=r'\[failover\]\.gate: \[ike\] feed = true needs gate = "nft"'
    ):
        load_daemon_config(write(tmp_path, psk, IKE_FEED, store=store))
    hot = '[failover]\nmode = "hot"\ngate = "nft"\n'
    cfg = load_daemon_config(write(tmp_path, psk, hot + IKE_FEED + NFT_GATE, store=store))
    assert cfg.ike is not None and cfg.ike.feed and cfg.failover.mode is StandbyMode.HOT
    cold = '[failover]\ngate = "nft"\n'
    cfg = load_daemon_config(write(tmp_path, psk, cold + IKE_FEED + NFT_GATE, store=store))
    assert cfg.ike is not None and cfg.ike.feed is True
    # The safety net is on by default and asks charon's own default vici socket.
    assert (cfg.ike.safety_net, cfg.ike.reinitiate) == (True, True)
    assert str(cfg.ike.vici) == "unix:///var/run/charon.vici"
    with pytest.raises(ConfigError, match=r"\[ike\]\.feed: must be true or false"):
        load_daemon_config(write(tmp_path, psk, IKE_FEED + 'feed = "yes"\n', store=store))


@pytest.mark.parametrize(
    ("ike", "message"),
    [
        ('daemon = "libreswan"\nrelay = "127.0.0.2"\ncharon = "127.0.0.1"', r"\.daemon: must be"),
        ('daemon = "strongswan"\ncharon = "127.0.0.1"', r"\[ike\]\.relay: is required"),
        (
            'daemon = "strongswan"\nrelay = "192.0.2.1"\ncharon = "127.0.0.1"',
            r"\[ike\]\.relay: must be a loopback address",
        ),
        (
            'daemon = "strongswan"\nrelay = "127.0.0.1"\ncharon = "127.0.0.1"',
            r"\[ike\]\.relay: .*cannot both be 127\.0\.0\.1 port 4510",
        ),
        (
            'daemon = "strongswan"\nrelay = "::1"\ncharon = "127.0.0.1"',
            r"\[ike\]\.relay: .*same address family",
        ),
        (
            'daemon = "strongswan"\nrelay = "127.0.0.2"\ncharon = "127.0.0.1"\nsecret = "x"',
            r"\[ike\]\.secret: unknown key",
        ),
        (
            'daemon = "strongswan"\nrelay = "127.0.0.2"\ncharon = "127.0.0.1"\n'
            'vici = "tcp://192.0.2.1:4502"',
            r"\[ike\]\.vici: .*tcp:// takes a loopback address.*no authentication",
        ),
        (
            'daemon = "strongswan"\nrelay = "127.0.0.2"\ncharon = "127.0.0.1"\n'
            'vici = "/var/run/charon.vici"',
            r"\[ike\]\.vici: .*write unix:///path or tcp://127\.0\.0\.1:port",
        ),
        (
            'daemon = "strongswan"\nrelay = "127.0.0.2"\ncharon = "127.0.0.1"\nsafety_net = 1',
            r"\[ike\]\.safety_net: must be true or false",
        ),
    ],
)
def test_bad_ike_values_name_the_key(tmp_path: Path, psk: Path, ike: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_daemon_config(write(tmp_path, psk, f"[ike]\n{ike}\n", store=IKE_STORE.format(psk=psk)))


def test_ike_needs_datagrams_that_hold_an_ike_sa(tmp_path: Path, psk: Path) -> None:
    body = IKE_STORE_ONLY
    with pytest.raises(
        ConfigError, match=r"\[store\]\.max_datagram: 1400 is too small for \[ike\]"
    ):
        load_daemon_config(write(tmp_path, psk, body))


def test_ike_with_a_guard_needs_the_guard_to_keep_the_plugin_on_loopback(
    tmp_path: Path, psk: Path
) -> None:
    ike = IKE_STORE_ONLY
    store = IKE_STORE.format(psk=psk)
    with pytest.raises(ConfigError, match=r"\[nft\]\.ha_relay: must be true with \[ike\]"):
        load_daemon_config(
            write(tmp_path, psk, ike + '[nft]\nvips = ["192.0.2.10"]\n', store=store)
        )
    cfg = load_daemon_config(
        write(tmp_path, psk, ike + '[nft]\nvips = ["192.0.2.10"]\nha_relay = true\n', store=store)
    )
    assert cfg.nft is not None and cfg.nft.ha_relay


def test_the_nft_gate_is_leased_by_default_and_the_jump_covers_the_lease(
    tmp_path: Path, psk: Path
) -> None:
    policy = load_daemon_config(write(tmp_path, psk))
    assert policy.failover.gate_lease_s is None
    nft = load_daemon_config(write(tmp_path, psk, '[failover]\ngate = "nft"\n'))
    assert nft.failover.gate_lease_s == 2.0
    # a gateway whose daemon died sends for up to the lease: the jump covers it
    assert nft.computed_jump == compute_jump(200_000, 1000, 0.5, 2.0, 0.12 + 2.0)
    assert nft.computed_jump > policy.computed_jump
    off = load_daemon_config(write(tmp_path, psk, '[failover]\ngate = "nft"\ngate_lease_s = 0\n'))
    assert off.failover.gate_lease_s is None and off.computed_jump == policy.computed_jump


def test_the_lease_covers_the_server_id_and_the_guards_vips(tmp_path: Path, psk: Path) -> None:
    cfg = load_daemon_config(
        write(
            tmp_path, psk, '[failover]\ngate = "nft"\n[nft]\nvips = ["192.0.2.1", "2001:db8::1"]\n'
        )
    )
    assert lease_addresses(cfg) == ("192.0.2.1", "2001:db8::1")
    fqdn = load_daemon_config(
        write(tmp_path, psk, node='id = "gw1"\nserver_id = "vpn.example.net"\nnode_index = 0')
    )
    assert lease_addresses(fqdn) == ()

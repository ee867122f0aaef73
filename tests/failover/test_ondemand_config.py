"""The daemon's [ondemand] and [nft] tables: defaults, the queue the trap feeds, bad keys named."""

import ipaddress
import os
from pathlib import Path

import pytest

from appliance.errors import ConfigError
from appliance.failover.config import load_daemon_config
from appliance.ondemand import OnDemandLimits

pytestmark = pytest.mark.unit

NFT = '[nft]\nvips = ["192.0.2.1"]\ntrap_queue = 7\n'


@pytest.fixture
def psk(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.psk"
    path.write_text("ab" * 32 + "\n")
    os.chmod(path, 0o600)
    return path


def write(tmp_path: Path, psk: Path, body: str) -> Path:
    path = tmp_path / "daemon.toml"
    path.write_text(
        '[node]\nid = "gw3"\nserver_id = "192.0.2.1"\nnode_index = 2\n'
        f'[store]\nservers = ["198.51.100.2"]\npsk_file = "{psk}"\n{body}'
    )
    return path


def test_without_the_tables_on_demand_is_off(tmp_path: Path, psk: Path) -> None:
    cfg = load_daemon_config(write(tmp_path, psk, ""))
    assert cfg.ondemand is None and cfg.nft is None


def test_enabled_takes_the_trap_queue_and_the_default_limits(tmp_path: Path, psk: Path) -> None:
    cfg = load_daemon_config(write(tmp_path, psk, NFT + "[ondemand]\nenabled = true\n"))
    assert cfg.nft is not None and cfg.nft.vips == (ipaddress.ip_address("192.0.2.1"),)
    assert cfg.ondemand is not None and cfg.ondemand.enabled
    assert cfg.ondemand.queue_num == 7
    assert cfg.ondemand.limits == OnDemandLimits()
    assert cfg.ondemand.workers == 4


def test_every_limit_can_be_set(tmp_path: Path, psk: Path) -> None:
    body = NFT + (
        "[ondemand]\nenabled = true\nqueue_num = 7\nrate = 5\nburst = 10\ntimeout_s = 8.5\n"
        "max_held_per_spi = 256\nmax_in_flight = 32\nnegative_ttl_s = 1\npositive_ttl_s = 3\n"
        "workers = 2\n"
    )
    od = load_daemon_config(write(tmp_path, psk, body)).ondemand
    assert od is not None
    assert od.limits == OnDemandLimits(
        rate=5.0,
        burst=10,
        timeout=8.5,
        max_held_per_spi=256,
        max_in_flight=32,
        negative_ttl=1.0,
        positive_ttl=3.0,
    )
    assert od.workers == 2


def test_disabled_needs_no_nft_table(tmp_path: Path, psk: Path) -> None:
    od = load_daemon_config(write(tmp_path, psk, "[ondemand]\nrate = 3\n")).ondemand
    assert od is not None and not od.enabled and od.limits.rate == 3.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[ondemand]\nenabled = true\n", "[ondemand].enabled: needs an [nft] table"),
        (
            '[nft]\nvips = ["192.0.2.1"]\n[ondemand]\nenabled = true\n',
            "[nft].trap_queue: is required when [ondemand].enabled is true",
        ),
        (NFT + "[ondemand]\nenabled = true\nqueue_num = 8\n", "[ondemand].queue_num: 8 differs"),
        (NFT + '[ondemand]\nenabled = "yes"\n', "[ondemand].enabled: must be true or false"),
        (NFT + "[ondemand]\nrate = 0\n", "[ondemand].rate: must be retrievals/s"),
        (NFT + "[ondemand]\nburst = true\n", "[ondemand].burst: must be an integer"),
        (NFT + "[ondemand]\ntimeout_s = -1\n", "[ondemand].timeout_s: must be seconds"),
        (NFT + "[ondemand]\nworkers = 0\n", "[ondemand].workers: must be an integer 1..64"),
        (NFT + "[ondemand]\nqueue = 7\n", "[ondemand].queue: unknown key"),
        ("[nft]\ntrap_queue = 7\n", "[nft].vips: missing"),
        ('[nft]\nvips = ["192.0.2.1"]\ntrap_queue = 70000\n', "[nft].trap_queue: 70000"),
    ],
)
def test_a_bad_value_names_the_file_and_the_key(
    tmp_path: Path, psk: Path, body: str, message: str
) -> None:
    path = write(tmp_path, psk, body)
    with pytest.raises(ConfigError) as err:
        load_daemon_config(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)

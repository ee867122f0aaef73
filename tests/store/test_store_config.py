"""Store configuration: validation names the key; the PSK file must be private."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import ConfigError
from appliance.store.config import load_client_config, load_psk, load_server_config

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "store.toml"

GOOD = """
[store]
port = 4501
psk_file = "/etc/ipsec-ha/cluster.psk"
[store.sqlite]
path = "/var/lib/ipsec-ha/store.db"
[client]
server = "192.0.2.10"
psk_file = "/etc/ipsec-ha/cluster.psk"
node_id = "gw1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "store.toml"
    path.write_text(text)
    return path


def test_example_config_loads() -> None:
    server = load_server_config(EXAMPLE)
    client = load_client_config(EXAMPLE)
    assert (server.port, server.backend, str(server.sqlite.path)) == (  # type: ignore[union-attr]
        4501,
        "sqlite",
        "/var/lib/ipsec-ha/store.db",
    )
    assert (client.server, client.node_id, client.retries) == ("192.0.2.10", "gw1.example.net", 5)


def test_defaults(tmp_path: Path) -> None:
    cfg = load_server_config(write(tmp_path, GOOD))
    assert (cfg.listen, cfg.response_cache, cfg.max_datagram) == ("0.0.0.0", 256, 1400)
    assert (cfg.max_peers_per_address, cfg.max_half_open_per_address) == (256, 16)
    assert load_client_config(write(tmp_path, GOOD)).timeout == 0.5


def test_per_address_limits_reach_the_servers_channel(tmp_path: Path) -> None:
    from appliance.store.server import StoreServer
    from appliance.store.sqlite import SqliteStore

    text = GOOD.replace("port = 4501", "port = 4501\nmax_peers_per_address = 900", 1)
    text = text.replace("port = 4501", "port = 4501\nmax_half_open_per_address = 40", 1)
    cfg = load_server_config(write(tmp_path, text))
    server = StoreServer(cfg, SqliteStore(tmp_path / "s.db"), b"k" * 32)
    try:
        channel = server.channel.config
        assert (channel.max_associations_per_source, channel.max_half_open_per_source) == (900, 40)
        assert channel.max_associations == cfg.max_peers == 1024
    finally:
        server.close()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("port = 4501", 'port = "abc"', '[store].port: must be an integer 1..65535, got "abc"'),
        ("port = 4501", "port = 0", "[store].port: must be an integer 1..65535, got 0"),
        ("port = 4501", "port = true", "[store].port: must be an integer 1..65535, got True"),
        ("port = 4501", "port = 4501\ncolour = 1", "[store].colour: unknown key"),
        (
            "port = 4501",
            "port = 4501\nmax_half_open_per_address = 0",
            "[store].max_half_open_per_address: must be an integer 1..1024, got 0",
        ),
        ('path = "/var', 'path = "var', "[store.sqlite].path: must be an absolute path"),
        ("port = 4501", 'port = 1\nbackend = "redis"', '[store].backend: must be "sqlite" or'),
        ("port = 4501", 'port = 1\nbackend = "etcd"', "[store.etcd].endpoints: is required"),
        ('psk_file = "/etc/ipsec-ha/cluster.psk"\n[store.sqlite]', "[store.sqlite]",
         "[store].psk_file: is required"),
        ("[client]", "[clients]", "[clients]: unknown table"),
    ],
)  # fmt: skip
def test_server_config_errors_name_the_key(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_server_config(path)
    assert str(err.value).startswith(f"config {path}: ")
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'server = "192.0.2.10"',
            'server = "store.local"',
            "[client].server: must be the store's IP",
        ),
        ('node_id = "gw1"', 'node_id = "gw 1"', "[client].node_id: must be this node's server ID"),
        ('node_id = "gw1"', "", "[client].node_id: is required"),
        (
            'node_id = "gw1"',
            'node_id = "gw1"\nretries = -1',
            "[client].retries: must be an integer",
        ),
        (
            'node_id = "gw1"',
            'node_id = "gw1"\ntimeout = "1s"',
            "[client].timeout: must be a number",
        ),
    ],
)
def test_client_config_errors_name_the_key(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_client_config(write(tmp_path, GOOD.replace(old, new, 1)))


def test_metrics_are_off_without_the_table_and_on_loopback_with_it(tmp_path: Path) -> None:
    assert load_server_config(write(tmp_path, GOOD)).metrics_listen is None
    cfg = load_server_config(write(tmp_path, GOOD + "[metrics]\n"))
    assert cfg.metrics_listen == ("127.0.0.1", 9642)
    # The client side of the same file reads past the table.
    assert load_client_config(write(tmp_path, GOOD + "[metrics]\n")).node_id == "gw1"


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ('"192.0.2.10:9100"', ("192.0.2.10", 9100)),
        ('"[2001:db8::10]:9642"', ("2001:db8::10", 9642)),
        ('"0.0.0.0:9642"', ("0.0.0.0", 9642)),
    ],
)
def test_metrics_listen_takes_any_ip_literal_and_port(
    tmp_path: Path, listen: str, expected: tuple[str, int]
) -> None:
    cfg = load_server_config(write(tmp_path, GOOD + f"[metrics]\nlisten = {listen}\n"))
    assert cfg.metrics_listen == expected


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('listen = "localhost:9642"', '[metrics].listen: must be an "ADDRESS:PORT"'),
        ('listen = "127.0.0.1"', '[metrics].listen: must be an "ADDRESS:PORT"'),
        ('listen = "127.0.0.1:0"', '[metrics].listen: must be an "ADDRESS:PORT"'),
        ('listen = "127.0.0.1:65536"', '[metrics].listen: must be an "ADDRESS:PORT"'),
        ('listen = "2001:db8::1:9642"', '[metrics].listen: must be an "ADDRESS:PORT"'),
        ("listen = 9642", '[metrics].listen: must be an "ADDRESS:PORT"'),
        ('listen = "127.0.0.1:9642"\nport = 1', "[metrics].port: unknown key"),
    ],
)
def test_metrics_errors_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    path = write(tmp_path, GOOD + f"[metrics]\n{table}\n")
    with pytest.raises(ConfigError) as err:
        load_server_config(path)
    assert str(err.value).startswith(f"config {path}: ")
    assert message in str(err.value)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_server_config(write(tmp_path, "[store\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_server_config(tmp_path / "absent.toml")


def test_psk_file_must_not_be_readable_by_others(tmp_path: Path) -> None:
    psk = tmp_path / "cluster.psk"
    psk.write_bytes(b"k" * 40 + b"\n")
    psk.chmod(0o644)
    with pytest.raises(ConfigError) as err:
        load_psk(psk)
    assert str(err.value) == (
        f"psk file {psk} is readable by group/others (mode 0644); chmod 600 it"
    )
    psk.chmod(0o640)
    with pytest.raises(ConfigError, match="mode 0640"):
        load_psk(psk)
    psk.chmod(0o600)
    assert load_psk(psk) == b"k" * 40


def test_psk_file_too_short_or_missing(tmp_path: Path) -> None:
    psk = tmp_path / "cluster.psk"
    psk.write_bytes(b"short\n")
    psk.chmod(0o600)
    with pytest.raises(ConfigError, match="holds 5 bytes; use at least 32"):
        load_psk(psk)
    with pytest.raises(ConfigError, match="cannot open"):
        load_psk(tmp_path / "none")


ETCD = """
[store]
psk_file = "/etc/ipsec-ha/cluster.psk"
previous_psk_files = ["/etc/ipsec-ha/cluster.psk.1"]
backend = "etcd"
[store.etcd]
endpoints = ["https://192.0.2.21:2379"]
ca_file = "/etc/ipsec-ha/etcd-ca.pem"
cert_file = "CERT"
key_file = "KEY"
user = "ipsec-ha"
password_file = "PASSWORD"
"""


def _etcd_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name in ("CERT", "KEY", "PASSWORD"):
        files[name] = tmp_path / name.lower()
        files[name].write_text("x\n")
        files[name].chmod(0o600)
    return files


def _etcd_config(tmp_path: Path, files: dict[str, Path], text: str = ETCD) -> Path:
    for name, path in files.items():
        text = text.replace(f'"{name}"', f'"{path}"')
    return write(tmp_path, text)


def test_etcd_client_certificate_user_and_previous_keys(tmp_path: Path) -> None:
    files = _etcd_files(tmp_path)
    cfg = load_server_config(_etcd_config(tmp_path, files))
    assert cfg.etcd is not None
    assert (cfg.etcd.cert_file, cfg.etcd.key_file, cfg.etcd.user, cfg.etcd.password_file) == (
        files["CERT"],
        files["KEY"],
        "ipsec-ha",
        files["PASSWORD"],
    )
    assert cfg.previous_psk_files == (Path("/etc/ipsec-ha/cluster.psk.1"),)
    assert load_server_config(write(tmp_path, GOOD)).previous_psk_files == ()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('cert_file = "CERT"\n', "", "[store.etcd].cert_file: is required with key_file"),
        ('key_file = "KEY"\n', "", "[store.etcd].key_file: is required with cert_file"),
        ('user = "ipsec-ha"\n', "", "[store.etcd].user: is required with password_file"),
        ('password_file = "PASSWORD"\n', "", "[store.etcd].password_file: is required with user"),
        ('user = "ipsec-ha"', 'user = ""', "[store.etcd].user: must be an etcd user name"),
        ('"CERT"', '"/nonexistent/cert.pem"', "[store.etcd].cert_file: /nonexistent/cert.pem: No "),
        ('"/etc/ipsec-ha/cluster.psk.1"]', '"cluster.psk.1"]',
         "[store].previous_psk_files: must be a list of absolute paths"),
    ],
)  # fmt: skip
def test_etcd_credential_errors_name_the_key(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    text = ETCD.replace(old, new, 1)
    with pytest.raises(ConfigError) as err:
        load_server_config(_etcd_config(tmp_path, _etcd_files(tmp_path), text))
    assert message in str(err.value)


@pytest.mark.parametrize("name", ["KEY", "PASSWORD"])
def test_etcd_key_and_password_files_must_be_private(tmp_path: Path, name: str) -> None:
    files = _etcd_files(tmp_path)
    files[name].chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by group/others \(mode 0644\); chmod 600"):
        load_server_config(_etcd_config(tmp_path, files))


def test_the_documented_example_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "store.toml"
    server = load_server_config(example)
    assert (server.backend, server.max_peers_per_address, server.max_datagram) == (
        "sqlite",
        256,
        1400,
    )
    assert load_client_config(example).node_id == "gw1.example.net"

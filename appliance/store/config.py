"""The store's TOML configuration: the server side (``[store]``) and the client side (``[client]``).

Every value is checked; an error names the file and the key
(``config FILE: [store].port: must be an integer 1..65535, got "abc"``) and
unknown keys are errors, so a typo never silently falls back to a default.
The pre-shared key lives in its own file, which must not be readable by
group or others.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config_toml import (
    TomlTable,
    abs_path,
    check_tables,
    float_in,
    int_in,
    ip_text,
    read_toml,
    server_id,
)
from appliance.errors import ConfigError
from appliance.metrics.config import STORE_PORT, load_metrics_config

DEFAULT_PORT = 4501
DEFAULT_CONFIG = Path("/etc/ipsec-ha/store.toml")
MIN_PSK_BYTES = 32


@dataclass(frozen=True)
class SqliteConfig:
    path: Path


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...]
    timeout: float = 5.0
    retry_for: float = 15.0
    ca_file: Path | None = None
    cert_file: Path | None = None
    """Client certificate (PEM) for etcd's --client-cert-auth; with ``key_file``."""
    key_file: Path | None = None
    user: str | None = None
    """etcd user (etcd auth enabled); its password is in ``password_file``."""
    password_file: Path | None = None


@dataclass(frozen=True)
class ServerConfig:
    """``[store]``: what ``ipsec-ha store serve`` needs."""

    listen: str
    port: int
    psk_file: Path
    backend: str
    sqlite: SqliteConfig | None
    etcd: EtcdConfig | None
    node_id: str = "store"
    max_peers: int = 1024
    """Peers with a live association; the least recently seen one is dropped beyond this."""
    response_cache: int = 256
    """Responses kept per peer so that a retransmitted request is answered, not re-applied."""
    max_datagram: int = 1400
    previous_psk_files: tuple[Path, ...] = ()
    """Former cluster keys: only to open records sealed at rest before a key rotation."""
    max_peers_per_address: int = 256
    """Associations from one source address (many gateways behind one NAT share it)."""
    max_half_open_per_address: int = 16
    """Handshakes from one source address not yet confirmed by the client's first datagram."""
    metrics_listen: tuple[str, int] | None = None
    """``[metrics] listen`` as (address, port): where ``/metrics`` is served; None: off."""


@dataclass(frozen=True)
class ClientConfig:
    """``[client]``: how a node (or the CLI) reaches the store."""

    server: str
    port: int
    psk_file: Path
    node_id: str
    timeout: float = 0.5
    """Seconds before the first retransmission; each later one waits twice as long."""
    retries: int = 5
    max_datagram: int = 1400


def _endpoints(v: Any) -> tuple[str, ...] | None:
    if not isinstance(v, list) or not v:
        return None
    if not all(isinstance(e, str) and e.startswith(("http://", "https://")) for e in v):
        return None
    return tuple(v)


def _abs_paths(v: Any) -> tuple[Path, ...] | None:
    if not isinstance(v, list) or not all(isinstance(e, str) and e.startswith("/") for e in v):
        return None
    return tuple(Path(e) for e in v)


def _user(v: Any) -> str | None:
    return v if isinstance(v, str) and 0 < len(v) <= 128 and v.isprintable() else None


def _etcd_credentials(
    sec: TomlTable,
) -> tuple[Path | None, Path | None, str | None, Path | None]:
    """``cert_file`` and ``key_file``, ``user`` and ``password_file``: each pair both or none."""
    cert = sec.get("cert_file", abs_path, "an absolute path (PEM client certificate)", None)
    key = sec.get("key_file", abs_path, "an absolute path (PEM private key)", None)
    user = sec.get("user", _user, "an etcd user name", None)
    password = sec.get("password_file", abs_path, "an absolute path", None)
    for name, value, other, other_value in (
        ("cert_file", cert, "key_file", key),
        ("key_file", key, "cert_file", cert),
        ("user", user, "password_file", password),
        ("password_file", password, "user", user),
    ):
        if value is not None and other_value is None:
            raise sec.fail(other, f"is required with {name}")
    for name, value, private in (
        ("cert_file", cert, False),
        ("key_file", key, True),
        ("password_file", password, True),
    ):
        if value is None:
            continue
        try:
            st = value.stat()
        except OSError as exc:
            raise sec.fail(name, f"{value}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise sec.fail(name, f"{value} is not a regular file")
        if private and st.st_mode & 0o077:
            raise sec.fail(
                name,
                f"{value} is readable by group/others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it",
            )
    return cert, key, user, password


def _top(path: Path, data: dict[str, Any], wanted: str) -> TomlTable:
    check_tables(path, data, ("store", "client", "metrics"), (wanted,))
    return TomlTable(path, wanted, data[wanted])


def _metrics(path: Path, data: dict[str, Any]) -> tuple[str, int] | None:
    """``[metrics] listen`` of the store server; None when the table is absent (metrics off)."""
    metrics = load_metrics_config(path, data, STORE_PORT)
    return None if metrics is None else metrics.listen


def load_server_config(path: str | os.PathLike[str]) -> ServerConfig:
    """Parse and check the ``[store]`` table of ``path``."""
    path = Path(path)
    data = read_toml(path)
    sec = _top(path, data, "store")
    listen = sec.get("listen", ip_text, "an IP address", "0.0.0.0")
    port = sec.get("port", int_in(1, 65535), "an integer 1..65535", DEFAULT_PORT)
    psk_file = sec.get("psk_file", abs_path, "an absolute path")
    node_id = sec.get("node_id", server_id, "a name of letters, digits and .-_:", "store")
    backend = sec.get(
        "backend", lambda v: v if v in ("sqlite", "etcd") else None, '"sqlite" or "etcd"', "sqlite"
    )
    max_peers = sec.get("max_peers", int_in(1, 1_000_000), "an integer 1..1000000", 1024)
    cache = sec.get("response_cache", int_in(1, 100_000), "an integer 1..100000", 256)
    max_dgram = sec.get("max_datagram", int_in(576, 65507), "an integer 576..65507", 1400)
    previous = sec.get(
        "previous_psk_files", _abs_paths, "a list of absolute paths (former cluster keys)", ()
    )
    per_address = sec.get(
        "max_peers_per_address", int_in(1, 1_000_000), "an integer 1..1000000", 256
    )
    half_open = sec.get("max_half_open_per_address", int_in(1, 1024), "an integer 1..1024", 16)
    sqlite_cfg = etcd_cfg = None
    sqlite_sec = sec.sub("sqlite")
    etcd_sec = sec.sub("etcd")
    if sqlite_sec is not None:
        sqlite_cfg = SqliteConfig(sqlite_sec.get("path", abs_path, "an absolute path"))
        sqlite_sec.finish()
    if etcd_sec is not None:
        etcd_cfg = EtcdConfig(
            etcd_sec.get("endpoints", _endpoints, "a non-empty list of http(s)://HOST:PORT"),
            etcd_sec.get("timeout", float_in(0.1, 60), "a number of seconds 0.1..60", 5.0),
            etcd_sec.get("retry_for", float_in(0, 600), "a number of seconds 0..600", 15.0),
            etcd_sec.get("ca_file", abs_path, "an absolute path", None),
            *_etcd_credentials(etcd_sec),
        )
        etcd_sec.finish()
    sec.finish()
    metrics_listen = _metrics(path, data)
    if backend == "sqlite" and sqlite_cfg is None:
        raise ConfigError(f"config {path}: [store.sqlite].path: is required for backend sqlite")
    if backend == "etcd" and etcd_cfg is None:
        raise ConfigError(f"config {path}: [store.etcd].endpoints: is required for backend etcd")
    return ServerConfig(
        listen,
        port,
        psk_file,
        backend,
        sqlite_cfg,
        etcd_cfg,
        node_id,
        max_peers,
        cache,
        max_dgram,
        previous_psk_files=previous,
        max_peers_per_address=per_address,
        max_half_open_per_address=half_open,
        metrics_listen=metrics_listen,
    )


def load_client_config(path: str | os.PathLike[str]) -> ClientConfig:
    """Parse and check the ``[client]`` table of ``path``."""
    path = Path(path)
    sec = _top(path, read_toml(path), "client")
    cfg = ClientConfig(
        server=sec.get("server", ip_text, "the store's IP address"),
        port=sec.get("port", int_in(1, 65535), "an integer 1..65535", DEFAULT_PORT),
        psk_file=sec.get("psk_file", abs_path, "an absolute path"),
        node_id=sec.get("node_id", server_id, "this node's server ID (IP address or FQDN)"),
        timeout=sec.get("timeout", float_in(0.01, 60), "a number of seconds 0.01..60", 0.5),
        retries=sec.get("retries", int_in(0, 20), "an integer 0..20", 5),
        max_datagram=sec.get("max_datagram", int_in(576, 65507), "an integer 576..65507", 1400),
    )
    sec.finish()
    return cfg


def load_psk(path: str | os.PathLike[str]) -> bytes:
    """The cluster pre-shared key; refused if the file is readable by group/others.

    The file holds the key as text (hex, base64 or a passphrase, one line);
    its bytes, without the trailing newline, are the key material.
    """
    path = Path(path)
    key = load_secret(path, "psk file")
    if len(key) < MIN_PSK_BYTES:
        raise ConfigError(f"psk file {path} holds {len(key)} bytes; use at least {MIN_PSK_BYTES}")
    return key


def load_secret(path: Path, what: str) -> bytes:
    """The one-line secret in ``path`` (no trailing newline); the file must be private."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} {path} is not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"{what} {path} is readable by group/others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it"
            )
        data = os.read(fd, 4097)
    finally:
        os.close(fd)
    if len(data) > 4096:
        raise ConfigError(f"{what} {path} is larger than 4096 bytes")
    return data.rstrip(b"\r\n")

"""The lab tier runs where ESP works: an ESP SA installs in a fresh namespace."""

import secrets
import subprocess

import pytest

pytestmark = pytest.mark.lab


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def test_an_esp_sa_installs_here(require_root: None) -> None:
    netns = f"iha-{secrets.token_hex(4)}-inside"
    assert ip("netns", "add", netns).returncode == 0
    try:
        added = ip(
            "-n", netns, "xfrm", "state", "add",
            "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp", "spi", "0x1000",
            "mode", "tunnel",
            "aead", "rfc4106(gcm(aes))", "0x" + secrets.token_hex(20), "128",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        listed = ip("-n", netns, "xfrm", "state", "list")
        assert "proto esp spi 0x00001000" in listed.stdout
    finally:
        ip("netns", "delete", netns)
    assert netns not in ip("netns", "list").stdout

"""The shipped systemd units: hardened, and starting commands that exist (or are documented)."""

import configparser
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.cli import app

pytestmark = pytest.mark.unit

UNITS = Path(__file__).parents[2] / "systemd"


def service(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser["Service"]


@pytest.mark.parametrize("name", ["ipsec-ha-daemon.service", "ipsec-ha-store.service"])
def test_units_are_hardened(name: str) -> None:
    svc = service(name)
    assert svc["Restart"] == "on-failure"
    assert svc["ProtectSystem"] == "strict"
    assert svc["PrivateTmp"] == "yes"
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["UMask"] == "0077"
    assert "--config" in shlex.split(svc["ExecStart"])


def test_daemon_keeps_only_net_admin() -> None:
    assert service("ipsec-ha-daemon.service")["CapabilityBoundingSet"] == "CAP_NET_ADMIN"


def test_store_has_no_capability_and_its_command_exists() -> None:
    svc = service("ipsec-ha-store.service")
    assert svc["CapabilityBoundingSet"] == ""
    argv = shlex.split(svc["ExecStart"])
    assert argv[0].endswith("/ipsec-ha")
    sub = argv[1 : argv.index("--config")]
    assert sub == ["store", "serve"]
    outcome = CliRunner().invoke(app, [*sub, "--help"])
    assert outcome.exit_code == 0
    assert "--config" in outcome.output

"""``ipsec-ha nft``: option handling and output, with the libnftables side faked (unit tier)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance import nft as guard
from appliance.cli import app
from appliance.errors import UsageError
from appliance.nft.config import NftConfig
from appliance.nft.status import GuardStatus, parse_listing

pytestmark = pytest.mark.unit

runner = CliRunner()


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, NftConfig]]:
    calls: list[tuple[str | None, NftConfig]] = []

    def fake_apply(netns: str | None, config: NftConfig) -> bool:
        calls.append((netns, config))
        return len(calls) == 1

    monkeypatch.setattr(guard, "apply_guard", fake_apply)
    return calls


def test_apply_reads_the_file_and_options_override_it(
    tmp_path: Path, applied: list[tuple[str | None, NftConfig]]
) -> None:
    path = tmp_path / "ipsec-ha.toml"
    path.write_text('[nft]\nvips = ["192.0.2.10"]\npeers = ["192.0.2.2"]\nsync_port = 4601\n')
    args = ["nft", "apply", "--config", str(path), "--peer", "192.0.2.5", "--netns", "gw", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "netns": "gw", "table": "inet ipsec_ha", "created": True, "applied": True
    }  # fmt: skip
    (netns, config) = applied[0]
    assert netns == "gw"
    assert [str(a) for a in config.peers] == ["192.0.2.5"]
    assert config.sync_port == 4601
    second = runner.invoke(app, ["nft", "apply", "--config", str(path)])
    assert second.stdout.strip() == "table inet ipsec_ha: updated"


def test_apply_from_options_alone(applied: list[tuple[str | None, NftConfig]]) -> None:
    args = ["nft", "apply", "--vip", "2001:db8::10", "--vip", "192.0.2.10", "--trap-queue", "4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (_netns, config) = applied[0]
    assert [str(a) for a in config.vips] == ["192.0.2.10", "2001:db8::10"]
    assert config.trap_queue == 4


def test_apply_without_any_config_is_a_usage_error(
    applied: list[tuple[str | None, NftConfig]],
) -> None:
    result = runner.invoke(app, ["nft", "apply"])
    assert isinstance(result.exception, UsageError)
    assert applied == []


def test_bad_config_is_one_line_naming_the_key_and_nothing_is_applied(tmp_path: Path) -> None:
    # A real process: the error line and exit status are what a script sees. No root needed,
    # because validation happens before libnftables is touched.
    path = tmp_path / "bad.toml"
    path.write_text('[nft]\nvips = ["192.0.2.10"]\npeers = ["192.0.2.2", "not-an-ip"]\n')
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "nft", "apply", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert (
        done.stderr == f"ipsec-ha: error: {path}: nft.peers[1]: 'not-an-ip' is not an IP address\n"
    )
    assert done.stdout == ""


def test_show_says_when_the_table_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "guard_status", lambda netns: GuardStatus(netns, present=False))
    result = runner.invoke(app, ["nft", "show", "--netns", "gw"])
    assert result.exit_code == 0
    assert "table inet ipsec_ha in netns gw: absent" in result.stdout
    as_json = json.loads(runner.invoke(app, ["nft", "show", "--json"]).stdout)
    assert as_json["present"] is False


def test_show_prints_counters_per_category(monkeypatch: pytest.MonkeyPatch) -> None:
    listing = json.loads((Path(__file__).parent / "data" / "listing_example.json").read_text())
    status = parse_listing(None, listing["nftables"], "table inet ipsec_ha {}")
    monkeypatch.setattr(guard, "guard_status", lambda netns: status)
    lines = runner.invoke(app, ["nft", "show"]).stdout.splitlines()
    assert lines[0] == "table inet ipsec_ha: present, 17 rules, 2 held SPIs"
    esp = next(line for line in lines if line.startswith("esp "))
    assert esp.split() == ["esp", "42/5040", "0/0"]
    sync = next(line for line in lines if line.startswith("sync "))
    assert sync.split() == ["sync", "0/0", "3/252"]
    assert lines[-1] == "table inet ipsec_ha {}"


def test_remove_of_an_absent_table_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "remove_guard", lambda netns: False)
    result = runner.invoke(app, ["nft", "remove"])
    assert result.exit_code == 0
    assert result.stdout.strip() == "table inet ipsec_ha: already absent, nothing to remove"


def test_spis_parses_hex_and_decimal(monkeypatch: pytest.MonkeyPatch) -> None:
    held: set[int] = set()
    monkeypatch.setattr(guard, "add_spis", lambda netns, spis: held.update(spis))
    monkeypatch.setattr(guard, "remove_spis", lambda netns, spis: held.difference_update(spis))
    monkeypatch.setattr(guard, "list_spis", lambda netns: sorted(held))
    result = runner.invoke(app, ["nft", "spis", "--add", "0x1234", "--add", "77", "--remove", "77"])
    assert result.stdout.strip() == "0x00001234"
    bad = runner.invoke(app, ["nft", "spis", "--add", "twelve"])
    assert isinstance(bad.exception, UsageError)

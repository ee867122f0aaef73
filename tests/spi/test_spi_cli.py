"""``ipsec-ha spi-range``: text, JSON and one-line errors."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance import spi
from appliance.cli import app
from appliance.errors import UsageError

pytestmark = pytest.mark.unit

runner = CliRunner()


def test_json_gives_the_partition_and_the_strongswan_settings() -> None:
    result = runner.invoke(app, ["spi-range", "--node-index", "1", "--nodes", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["node_index"] == 1 and data["nodes"] == 2 and data["source"] == "partition"
    assert (data["spi_min"], data["spi_max"]) == (0x80000080, 0xFFFFFFFF)
    assert (data["spi_min_hex"], data["spi_max_hex"]) == ("0x80000080", "0xffffffff")
    assert data["size"] == 0xFFFFFFFF - 0x80000080 + 1
    assert "    spi_min = 0x80000080\n    spi_max = 0xffffffff\n" in data["strongswan_conf"]


def test_json_of_every_node_of_a_cluster_is_disjoint() -> None:
    seen: list[tuple[int, int]] = []
    for index in range(3):
        result = runner.invoke(
            app, ["spi-range", "--node-index", str(index), "--nodes", "3", "--json"]
        )
        data = json.loads(result.stdout)
        seen.append((data["spi_min"], data["spi_max"]))
    assert seen == sorted(seen)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(seen))


def test_text_shows_the_range_and_the_snippet() -> None:
    result = runner.invoke(app, ["spi-range", "--spi-min", "0xc0000000", "--spi-max", "0xcfffffff"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "SPIs 0xc0000000..0xcfffffff (268435456 SPIs, explicit)"
    assert "charon {" in lines and "    spi_min = 0xc0000000" in lines


def test_config_file_gives_the_range(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text("[node]\nnode_index = 0\n")
    result = runner.invoke(app, ["spi-range", "--config", str(path), "--nodes", "4", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["spi_min"], data["spi_max"]) == (
        spi.partition(0, 4).spi_min,
        spi.partition(0, 4).spi_max,
    )


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--node-index", "0"],
        ["--spi-min", "0x1000"],
        ["--spi-min", "0x1000", "--spi-max", "0x2000", "--nodes", "2"],
        ["--config", "/nonexistent.toml", "--node-index", "0"],
        ["--node-index", "2", "--nodes", "2"],
        ["--spi-min", "zz", "--spi-max", "0x2000"],
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str]) -> None:
    result = runner.invoke(app, ["spi-range", *args])
    assert isinstance(result.exception, UsageError), result.output
    assert result.stdout == ""


def test_error_is_one_line_with_exit_status_2() -> None:
    # A real process: the line and status are what a script sees.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "spi-range",
            "--spi-min",
            "0xff",
            "--spi-max",
            "0x1000",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "ipsec-ha: error: spi_min 0xff is outside 0x100..0xffffffff "
        "(SPIs 0..0xff are reserved, RFC 4303 section 2.1)\n"
    )
    assert done.stdout == ""

"""``appliance.spi``: the partition arithmetic, explicit ranges and the strongSwan snippet."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance import spi
from appliance.errors import ApplianceError, ConfigError, UsageError

pytestmark = pytest.mark.unit


@given(st.integers(1, spi.MAX_NODES))
def test_partition_ranges_are_disjoint_ordered_and_cover_the_space(nodes: int) -> None:
    ranges = [spi.partition(i, nodes) for i in range(nodes)]
    assert ranges[0].spi_min == spi.SPI_FIRST == 0x100
    assert ranges[-1].spi_max == spi.SPI_LAST == 0xFFFFFFFF
    for before, after in itertools.pairwise(ranges):
        # Adjacent with no gap and no shared SPI: together they cover every usable SPI once.
        assert after.spi_min == before.spi_max + 1
        assert not before.overlaps(after)
    assert sum(r.size for r in ranges) == spi.SPI_LAST - spi.SPI_FIRST + 1
    sizes = {r.size for r in ranges}
    assert max(sizes) - min(sizes) <= 1


@given(
    st.integers(1, spi.MAX_NODES).flatmap(
        lambda n: st.tuples(
            st.just(n), st.integers(0, n - 1), st.integers(0, n - 1), st.integers(0, 2**32 - 1)
        )
    )
)
def test_an_spi_belongs_to_at_most_one_node(args: tuple[int, int, int, int]) -> None:
    nodes, a, b, spi_value = args
    ra, rb = spi.partition(a, nodes), spi.partition(b, nodes)
    if a != b:
        assert not ra.overlaps(rb)
        assert not (spi_value in ra and spi_value in rb)
    owners = [i for i in range(nodes) if spi_value in spi.partition(i, nodes)]
    assert len(owners) == (0 if spi_value < 0x100 else 1)


def test_two_nodes_split_at_the_middle() -> None:
    first, second = spi.partition(0, 2), spi.partition(1, 2)
    assert (first.spi_min, first.spi_max) == (0x100, 0x8000007F)
    assert (second.spi_min, second.spi_max) == (0x80000080, 0xFFFFFFFF)


@pytest.mark.parametrize(
    ("node_index", "nodes", "message"),
    [
        (0, 0, "node count must be an integer 1..16, got 0"),
        (0, 17, "node count must be an integer 1..16, got 17"),
        (2, 2, "node index must be an integer 0..1 for 2 node(s), got 2"),
        (-1, 2, "node index must be an integer 0..1 for 2 node(s), got -1"),
        (True, 2, "node index must be an integer 0..1 for 2 node(s), got True"),
    ],
)
def test_bad_partition_arguments_are_usage_errors(
    node_index: int, nodes: int, message: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        spi.partition(node_index, nodes)


@given(st.integers(0x100, 0xFFFFFFFF), st.integers(0x100, 0xFFFFFFFF))
def test_explicit_range_is_accepted_iff_ordered(low: int, high: int) -> None:
    if low <= high:
        rng = spi.explicit(low, high)
        assert rng.size == high - low + 1 and low in rng and high in rng
        assert low - 1 not in rng and high + 1 not in rng
    else:
        with pytest.raises(spi.SpiRangeError, match="greater than spi_max"):
            spi.explicit(low, high)


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [
        (0xFF, 0x1000, "spi_min 0xff is outside 0x100..0xffffffff"),
        (0x100, 2**32, "spi_max 0x100000000 is outside 0x100..0xffffffff"),
        (0, 0, "spi_min 0x0 is outside"),
    ],
)
def test_reserved_or_oversized_spis_are_refused(low: int, high: int, message: str) -> None:
    with pytest.raises(spi.SpiRangeError, match=re.escape(message)):
        spi.explicit(low, high)


def test_parse_spi_takes_hex_and_decimal_and_names_bad_text() -> None:
    assert spi.parse_spi("0xC0000000", "--spi-min") == 0xC0000000
    assert spi.parse_spi("4096", "--spi-max") == 4096
    with pytest.raises(spi.SpiRangeError, match=r"--spi-min: 'c0zz' is not an SPI"):
        spi.parse_spi("c0zz", "--spi-min")


def test_strongswan_snippet_sets_charon_spi_min_and_max_in_hex() -> None:
    text = spi.strongswan_snippet(spi.partition(1, 4))
    assert text.startswith("# ipsec-ha SPI range (node 1 of 4)")
    # strongswan.conf syntax: section { key = value }, values as strongSwan's own 0x defaults.
    body = [line.strip() for line in text.splitlines() if not line.startswith("#")]
    assert body == ["charon {", "spi_min = 0x400000c0", "spi_max = 0x8000007f", "}"]


def test_strongswan_snippet_uses_option_names_strongswan_documents() -> None:
    # The Debian template lists every charon option; skip only where strongSwan is absent.
    template = Path("/usr/share/strongswan/templates/config/strongswan.d/charon.conf")
    if not template.exists():
        pytest.skip("strongSwan's charon.conf template is not installed")
    documented = template.read_text()
    for key in ("spi_min", "spi_max"):
        assert re.search(rf"^\s*# {key} = 0x[0-9a-f]{{8}}$", documented, re.M)
        assert f"    {key} = 0x" in spi.strongswan_snippet(spi.explicit(0xC0000000, 0xCFFFFFFF))


# -- config file -------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    return path


def test_config_with_node_count_derives_the_partition(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nid = "gw2"\nnode_index = 1\n[spi]\nnodes = 2\n[store]\nx = 1\n')
    assert spi.load_spi_config(path) == spi.partition(1, 2)


def test_config_with_hex_bounds_gives_an_explicit_range(tmp_path: Path) -> None:
    path = write(
        tmp_path, "[node]\nnode_index = 3\n[spi]\nspi_min = 0xc0000000\nspi_max = 0xcfffffff\n"
    )
    rng = spi.load_spi_config(path)
    assert (rng.spi_min, rng.spi_max, rng.node_index, rng.nodes) == (
        0xC0000000,
        0xCFFFFFFF,
        3,
        None,
    )


def test_config_without_spi_table_takes_nodes_from_the_caller(tmp_path: Path) -> None:
    path = write(tmp_path, "[node]\nnode_index = 2\n")
    assert spi.load_spi_config(path, nodes=3) == spi.partition(2, 3)
    with pytest.raises(ConfigError, match=r"\[spi\]: table is required"):
        spi.load_spi_config(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[spi]\nnodes = 2\n", "[node]: table is required"),
        (
            "[node]\nnode_index = 16\n[spi]\nnodes = 2\n",
            "[node].node_index: must be an integer 0..15, got 16",
        ),
        (
            "[node]\nnode_index = 2\n[spi]\nnodes = 2\n",
            "[node].node_index: must be below [spi].nodes (2), got 2",
        ),
        (
            "[node]\nnode_index = 0\n[spi]\nnodes = 0\n",
            "[spi].nodes: must be an integer 1..16, got 0",
        ),
        ("[node]\nnode_index = 0\n[spi]\nnode = 2\n", "[spi].node: unknown key"),
        ("[node]\nnode_index = 0\n[spi]\n", "[spi].nodes: is required when spi_min and spi_max"),
        ("[node]\nnode_index = 0\n[spi]\nspi_min = 0x1000\n", "[spi].spi_max: is required"),
        (
            "[node]\nnode_index = 0\n[spi]\nnodes = 2\nspi_min = 0x1000\nspi_max = 0x2000\n",
            "[spi].nodes: give either nodes or spi_min and spi_max",
        ),
        (
            "[node]\nnode_index = 0\n[spi]\nspi_min = 0x10\nspi_max = 0x2000\n",
            "[spi]: spi_min 0x10 is outside",
        ),
        (
            "[node]\nnode_index = 0\n[spi]\nspi_min = 0x3000\nspi_max = 0x2000\n",
            "[spi]: spi_min 0x3000 is greater than spi_max 0x2000",
        ),
        (
            '[node]\nnode_index = 0\n[spi]\nspi_min = "0x1000"\nspi_max = 0x2000\n',
            '[spi].spi_min: must be an SPI 0x100..0xffffffff, got "0x1000"',
        ),
        ("[node\n", "not valid TOML"),
    ],
)
def test_bad_config_is_refused_naming_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        spi.load_spi_config(path)
    assert str(err.value).startswith(f"config {path}: ")
    assert message in str(err.value)


def test_nodes_option_and_spi_table_together_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[node]\nnode_index = 0\n[spi]\nnodes = 2\n")
    with pytest.raises(UsageError, match="--nodes conflicts with the \\[spi\\] table"):
        spi.load_spi_config(path, nodes=4)


def test_missing_config_file_is_an_appliance_error(tmp_path: Path) -> None:
    with pytest.raises(ApplianceError, match="cannot read"):
        spi.load_spi_config(tmp_path / "absent.toml")

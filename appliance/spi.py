"""Cluster-wide SPI partitioning: each node allocates inbound SPIs from its own range.

Two gateways of one cluster restore each other's SAs, so an SPI allocated on
one node must never be allocated on another for the same destination: the
restored SA would collide with a live one.  The first line of defence is
arithmetic: the SPI space is split into disjoint ranges by node index (or an
operator gives each node an explicit range), and every ``XFRM_MSG_ALLOCSPI``
asks the kernel for an SPI inside the node's range.  The second line is the
SA store, which refuses an SA whose (SPI, dst, proto) belongs to another
server ID (``SPI_COLLISION``).

SPIs 1..255 are reserved by IANA and 0 is never sent (RFC 4303 §2.1), so the
usable space is 0x100..0xffffffff.  ``partition`` gives node ``i`` of ``n``
the slice ``[first + total*i//n, first + total*(i+1)//n)``: the slices are
disjoint, cover the whole space, and differ in size by at most one.

This module is pure (no I/O except reading a config file in
:func:`load_spi_config`); strongSwan next to the appliance gets the same
range through :func:`strongswan_snippet` (``charon.spi_min``/``spi_max``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config_toml import TomlTable, int_in, is_integer, read_toml
from appliance.errors import ConfigError, UsageError

SPI_FIRST = 0x100
"""The lowest SPI a node may allocate (1..255 are reserved by IANA, RFC 4303 §2.1)."""
SPI_LAST = 0xFFFFFFFF
"""The highest SPI (32 bits)."""
MAX_NODES = 16
"""The cluster size limit; the daemon's ``[node].node_index`` is 0..15."""


class SpiRangeError(UsageError):
    """An SPI range, node index or node count is invalid; the message names which."""


@dataclass(frozen=True)
class SpiRange:
    """An inclusive range of SPIs ``spi_min..spi_max`` that one node allocates from."""

    spi_min: int
    spi_max: int
    node_index: int | None = None
    """The node this range belongs to (None: not known, e.g. an explicit range alone)."""
    nodes: int | None = None
    """The cluster size the range was derived from (None: an explicit range)."""

    def __post_init__(self) -> None:
        check_bounds(self.spi_min, self.spi_max)

    @property
    def size(self) -> int:
        """How many SPIs the range holds."""
        return self.spi_max - self.spi_min + 1

    def __contains__(self, spi: object) -> bool:
        return isinstance(spi, int) and self.spi_min <= spi <= self.spi_max

    def overlaps(self, other: SpiRange) -> bool:
        """True when one SPI lies in both ranges."""
        return self.spi_min <= other.spi_max and other.spi_min <= self.spi_max

    def to_dict(self) -> dict[str, Any]:
        """The range for ``--json``: numbers, their hex text and the strongSwan settings."""
        return {
            "node_index": self.node_index,
            "nodes": self.nodes,
            "source": "explicit" if self.nodes is None else "partition",
            "spi_min": self.spi_min,
            "spi_max": self.spi_max,
            "spi_min_hex": spi_hex(self.spi_min),
            "spi_max_hex": spi_hex(self.spi_max),
            "size": self.size,
            "strongswan_conf": strongswan_snippet(self),
        }


def spi_hex(spi: int) -> str:
    """``0x0000abcd``: the eight-digit form strongSwan and ``ip xfrm`` print."""
    return f"0x{spi:08x}"


def check_bounds(spi_min: object, spi_max: object) -> None:
    """Refuse a range outside 0x100..0xffffffff or with ``spi_min > spi_max``."""
    for name, value in (("spi_min", spi_min), ("spi_max", spi_max)):
        if not is_integer(value):
            raise SpiRangeError(f"{name} must be an integer, got {value!r}")
        if not SPI_FIRST <= value <= SPI_LAST:
            raise SpiRangeError(
                f"{name} {value:#x} is outside 0x100..0xffffffff "
                "(SPIs 0..0xff are reserved, RFC 4303 section 2.1)"
            )
    if is_integer(spi_min) and is_integer(spi_max) and spi_min > spi_max:
        raise SpiRangeError(f"spi_min {spi_min:#x} is greater than spi_max {spi_max:#x}")


def check_partition_args(node_index: object, nodes: object) -> None:
    """Refuse a node count outside 1..16 or a node index outside 0..nodes-1."""
    if not is_integer(nodes) or not 1 <= nodes <= MAX_NODES:
        raise SpiRangeError(f"the node count must be an integer 1..{MAX_NODES}, got {nodes!r}")
    if not is_integer(node_index) or not 0 <= node_index < nodes:
        raise SpiRangeError(
            f"the node index must be an integer 0..{nodes - 1} for {nodes} node(s), "
            f"got {node_index!r}"
        )


def partition(node_index: int, nodes: int) -> SpiRange:
    """Node ``node_index``'s share of 0x100..0xffffffff split ``nodes`` ways."""
    check_partition_args(node_index, nodes)
    total = SPI_LAST - SPI_FIRST + 1
    first = SPI_FIRST + total * node_index // nodes
    end = SPI_FIRST + total * (node_index + 1) // nodes
    return SpiRange(first, end - 1, node_index=node_index, nodes=nodes)


def explicit(spi_min: int, spi_max: int, node_index: int | None = None) -> SpiRange:
    """An operator-given range, validated."""
    return SpiRange(spi_min, spi_max, node_index=node_index)


def parse_spi(text: str, what: str) -> int:
    """An SPI typed by an operator: hex with ``0x`` (as strongSwan writes it) or decimal."""
    cleaned = text.strip().replace("_", "")
    try:
        value = int(cleaned, 16) if cleaned.lower().startswith("0x") else int(cleaned, 10)
    except ValueError:
        raise SpiRangeError(f"{what}: {text!r} is not an SPI (hex 0x... or decimal)") from None
    return value


def strongswan_snippet(rng: SpiRange) -> str:
    """A strongswan.conf fragment restricting charon's SPIs to ``rng``.

    The options are ``charon.spi_min``/``charon.spi_max`` (strongSwan's own
    defaults are ``0xc0000000``/``0xcfffffff``, written in hex like here).
    """
    if rng.nodes is not None:
        origin = f"node {rng.node_index} of {rng.nodes}"
    elif rng.node_index is not None:
        origin = f"node {rng.node_index}, explicit range"
    else:
        origin = "explicit range"
    return (
        f"# ipsec-ha SPI range ({origin}): {rng.size} SPIs\n"
        "charon {\n"
        f"    spi_min = {spi_hex(rng.spi_min)}\n"
        f"    spi_max = {spi_hex(rng.spi_max)}\n"
        "}\n"
    )


def load_spi_config(path: Path, nodes: int | None = None) -> SpiRange:
    """The range configured in a daemon TOML file: ``[node].node_index`` plus ``[spi]``.

    ``[spi]`` holds either ``nodes`` (the range is derived from the node
    index) or ``spi_min`` and ``spi_max`` (TOML integers, hex allowed:
    ``0xc0000000``).  ``nodes`` given by the caller (``--nodes``) stands in
    for a missing ``[spi]`` table and must not be combined with one.  Only these keys are
    read; the daemon's own loader checks the rest of the file.
    """
    data = read_toml(path)
    if "node" not in data:
        raise ConfigError(f"config {path}: [node]: table is required (for node_index)")
    node_t = TomlTable(path, "node", data["node"])
    node_index = node_t.get(
        "node_index", int_in(0, MAX_NODES - 1), f"an integer 0..{MAX_NODES - 1}"
    )
    if "spi" not in data:
        if nodes is None:
            raise ConfigError(
                f"config {path}: [spi]: table is required (nodes, or spi_min and spi_max) "
                "unless --nodes is given"
            )
        return partition(node_index, nodes)
    if nodes is not None:
        # Two sources for one number would let a typo pick the range silently.
        raise UsageError(f"--nodes conflicts with the [spi] table of {path}; give only one")
    spi_t = TomlTable(path, "spi", data["spi"])
    spi_word = int_in(0, SPI_LAST)
    spi_min = spi_t.get("spi_min", spi_word, "an SPI 0x100..0xffffffff", None)
    spi_max = spi_t.get("spi_max", spi_word, "an SPI 0x100..0xffffffff", None)
    file_nodes = spi_t.get("nodes", int_in(1, MAX_NODES), f"an integer 1..{MAX_NODES}", None)
    spi_t.finish()
    if spi_min is None and spi_max is None:
        if file_nodes is None:
            raise spi_t.fail("nodes", "is required when spi_min and spi_max are not given")
        count = file_nodes
        if node_index >= count:
            raise node_t.fail(
                "node_index", f"must be below [spi].nodes ({count}), got {node_index}"
            )
        return partition(node_index, count)
    if file_nodes is not None:
        raise spi_t.fail("nodes", "give either nodes or spi_min and spi_max, not both")
    if spi_min is None or spi_max is None:
        missing = "spi_min" if spi_min is None else "spi_max"
        raise spi_t.fail(missing, "is required with the other end of the range")
    try:
        return explicit(spi_min, spi_max, node_index)
    except SpiRangeError as exc:
        raise ConfigError(f"config {path}: [spi]: {exc}") from None

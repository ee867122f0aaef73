"""Apply, read and remove the guard's table; keep its held-SPI set (thin adapters)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from appliance.errors import KernelError
from appliance.nft import libnft
from appliance.nft.config import NftConfig
from appliance.nft.render import (
    SPI_SET,
    TABLE,
    render_removal,
    render_ruleset,
    render_spi_addition,
    render_spi_removal,
)
from appliance.nft.status import GuardStatus, parse_listing, table_listed


def apply_guard(netns: str | None, config: NftConfig) -> bool:
    """Install or update the guard in one transaction; return whether the table was new.

    Re-applying the same config changes nothing but the rules' handles; the
    named counters and the held SPIs are kept.
    """
    existed = table_present(netns)
    libnft.run_batch(netns, render_ruleset(config), f"ruleset of table {TABLE}")
    return not existed


def remove_guard(netns: str | None) -> bool:
    """Remove the guard's table and only it; return whether it was there."""
    existed = table_present(netns)
    libnft.run_batch(netns, render_removal(), f"removal of table {TABLE}")
    return existed


def table_present(netns: str | None) -> bool:
    """Whether the guard's table exists in ``netns``."""
    return libnft.session(netns, lambda nft: _present(nft, netns))


def guard_status(netns: str | None) -> GuardStatus:
    """Read the table's counters, sets and rules; ``present=False`` when it is absent."""

    def work(nft: Any) -> GuardStatus:
        if not _present(nft, netns):
            return GuardStatus(netns=netns, present=False)
        items = libnft.list_json(nft, f"list table {TABLE}", netns)
        text = libnft.list_text(nft, f"list table {TABLE}", netns)
        return parse_listing(netns, items, text)

    return libnft.session(netns, work)


def add_spis(netns: str | None, spis: Iterable[int]) -> None:
    """Add inbound SPIs to the held set in one transaction (held ones stay)."""
    script = render_spi_addition(spis)
    _require_table(netns)
    libnft.run_batch(netns, script, f"addition to set {SPI_SET}")


def remove_spis(netns: str | None, spis: Iterable[int]) -> None:
    """Remove inbound SPIs from the held set in one transaction (absent ones are ignored)."""
    script = render_spi_removal(spis)
    _require_table(netns)
    libnft.run_batch(netns, script, f"removal from set {SPI_SET}")


def list_spis(netns: str | None) -> list[int]:
    """Return the held SPIs, sorted."""

    def work(nft: Any) -> list[int]:
        if not _present(nft, netns):
            raise _absent(netns)
        items = libnft.list_json(nft, f"list set {TABLE} {SPI_SET}", netns)
        return parse_listing(netns, items).held_spis

    return libnft.session(netns, work)


def _present(nft: Any, netns: str | None) -> bool:
    return table_listed(libnft.list_json(nft, "list tables", netns))


def _require_table(netns: str | None) -> None:
    if not table_present(netns):
        raise _absent(netns)


def _absent(netns: str | None) -> KernelError:
    where = f" in network namespace {netns!r}" if netns else ""
    return KernelError(f"table {TABLE} is absent{where}; run `ipsec-ha nft apply` first")

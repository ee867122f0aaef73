"""What the guard's table holds, read from libnftables' JSON listing (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.nft.render import CATEGORIES, COUNTERS, SPI_SET, TABLE, TABLE_FAMILY, TABLE_NAME


@dataclass(frozen=True)
class CounterValue:
    """One named nftables counter."""

    packets: int
    """Packets counted."""
    bytes: int
    """Bytes counted (layer 3 and up)."""


@dataclass(frozen=True)
class GuardStatus:
    """The guard's table in one namespace, or its absence."""

    netns: str | None
    """The namespace read (``None``: the caller's)."""
    present: bool
    """Whether the table exists."""
    counters: dict[str, CounterValue] = field(default_factory=dict)
    """Named counters by name (see ``render.COUNTERS``)."""
    sets: dict[str, list[str]] = field(default_factory=dict)
    """Address sets (``vips4``, ``cluster6``, ...) and their elements."""
    held_spis: list[int] = field(default_factory=list)
    """Inbound SPIs in the held set."""
    rule_count: int = 0
    """Rules in the table's chains."""
    ruleset_text: str = ""
    """The table in nftables syntax, as libnftables lists it."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready view (the ``--json`` output of ``ipsec-ha nft show``)."""
        return {
            "netns": self.netns,
            "table": TABLE,
            "present": self.present,
            "counters": {
                name: {"packets": value.packets, "bytes": value.bytes}
                for name, value in self.counters.items()
            },
            "categories": self.categories(),
            "sets": self.sets,
            "held_spis": self.held_spis,
            "rule_count": self.rule_count,
            "ruleset": self.ruleset_text,
        }

    def categories(self) -> dict[str, dict[str, int]]:
        """Packets accepted and dropped per category, plus the trap's queued and dropped."""
        table: dict[str, dict[str, int]] = {}
        for category in CATEGORIES:
            table[category] = {
                verdict: self._packets(f"{category}_{verdict}")
                for verdict in ("accepted", "dropped")
            }
        table["spi_trap"] = {
            "queued": self._packets("spi_trap_queued"),
            "dropped": self._packets("spi_trap_dropped"),
        }
        return table

    def _packets(self, name: str) -> int:
        value = self.counters.get(name)
        return value.packets if value else 0


def parse_listing(
    netns: str | None, items: Iterable[Mapping[str, Any]], ruleset_text: str = ""
) -> GuardStatus:
    """Build a status from the ``nftables`` array of ``list table inet ipsec_ha``."""
    counters: dict[str, CounterValue] = {}
    sets: dict[str, list[str]] = {}
    held: list[int] = []
    rules = 0
    for item in items:
        kind, body = next(iter(item.items()))
        if not isinstance(body, Mapping) or not _ours(body):
            continue
        if kind == "counter":
            counters[body["name"]] = CounterValue(int(body["packets"]), int(body["bytes"]))
        elif kind == "set":
            elements = [_element(element) for element in body.get("elem", [])]
            if body["name"] == SPI_SET:
                held = sorted(int(element) for element in elements)
            else:
                sets[body["name"]] = [str(element) for element in elements]
        elif kind == "rule":
            rules += 1
    ordered = {name: counters[name] for name in COUNTERS if name in counters}
    ordered.update({name: value for name, value in counters.items() if name not in ordered})
    return GuardStatus(
        netns=netns,
        present=True,
        counters=ordered,
        sets=sets,
        held_spis=held,
        rule_count=rules,
        ruleset_text=ruleset_text,
    )


def table_listed(items: Iterable[Mapping[str, Any]]) -> bool:
    """Whether the ``nftables`` array of ``list tables`` contains the guard's table."""
    return any(
        isinstance(item.get("table"), Mapping) and _ours(item["table"], name_key="name")
        for item in items
    )


def _ours(body: Mapping[str, Any], name_key: str = "table") -> bool:
    return body.get("family") == TABLE_FAMILY and body.get(name_key) == TABLE_NAME


def _element(element: Any) -> Any:
    # Elements with a timeout or a counter come wrapped as {"elem": {"val": ...}}.
    if isinstance(element, Mapping) and "elem" in element:
        inner = element["elem"]
        return inner.get("val") if isinstance(inner, Mapping) else inner
    return element

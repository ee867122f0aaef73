"""The one-rule outbound gate: table ``inet ipsec_ha_gate`` (``[failover] gate = "nft"``).

Theory of operation
-------------------
A standby must never emit ESP with a sequence number the peer has seen
(docs/failover.md).  The policy gate does that per ``out`` policy (a block
policy in its place), so opening it costs one ``XFRM_MSG_UPDPOLICY`` per
tunnel.  This gate does it with one rule instead, and the ``out`` policies
stay real:

- Set ``gated_spis`` holds the SPI of every SA the node installed for the
  served state (inbound ones too: they are never used for output, so they
  match nothing, and keeping them spares the daemon telling the two apart).
- Chain ``outbound`` hooks ``postrouting``.  While the gate is closed it
  holds one rule, ``ipsec out spi @gated_spis drop``; open, it is empty.
  Opening and closing are one rule each, whatever the number of tunnels.

Why ``ipsec out spi`` at ``postrouting``: the packet seen there is the
clear-text one, already routed to its XFRM bundle (``xfrm4_output`` and
``xfrm6_output`` run the hook before the transform), so a drop comes before
the ESP transform takes a sequence number; forwarded and locally sent
traffic both pass it.  The match needs the kernel's ``nft_xfrm``
(``CONFIG_NFT_XFRM``); :func:`probe_gate` checks it before the daemon relies
on the gate.

Every script below is one libnftables batch: the kernel commits it whole or
not at all.  Each starts by adding the table, set, counter and chain (no-ops
when they exist), so any of them may run first.  The gate's table is
separate from the guard's ``inet ipsec_ha``, so ``ipsec-ha nft remove`` never
opens it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from appliance.errors import KernelError
from appliance.nft import libnft
from appliance.nft.render import validate_spis

GATE_FAMILY = "inet"
GATE_TABLE_NAME = "ipsec_ha_gate"
GATE_TABLE = f"{GATE_FAMILY} {GATE_TABLE_NAME}"
GATE_CHAIN = "outbound"
GATE_SET = "gated_spis"
GATE_COUNTER = "gate_dropped"
GATE_RULE = f"ipsec out spi @{GATE_SET} counter name {GATE_COUNTER} drop"
_PROBE_CHAIN = "probe"

_NFT_XFRM_HINT = (
    " (the gate needs nft_xfrm, CONFIG_NFT_XFRM, for `ipsec out spi`; "
    'without it use [failover] gate = "policy")'
)


# -- rendering (pure) ----------------------------------------------------------------


def _skeleton() -> list[str]:
    return [
        f"add table {GATE_TABLE}",
        f"add set {GATE_TABLE} {GATE_SET} {{ typeof esp spi; }}",
        f"add counter {GATE_TABLE} {GATE_COUNTER}",
        f"add chain {GATE_TABLE} {GATE_CHAIN} {{ type filter hook postrouting "
        f"priority filter - 10; policy accept; }}",
    ]


def _elements(spis: Iterable[int]) -> str:
    return ", ".join(f"{spi:#010x}" for spi in validate_spis(spis))


def render_close(spis: Iterable[int]) -> str:
    """Close the gate over exactly ``spis``: the set is replaced, the one rule is put in."""
    wanted = list(spis)
    lines = [*_skeleton(), f"flush set {GATE_TABLE} {GATE_SET}"]
    if wanted:
        lines.append(f"add element {GATE_TABLE} {GATE_SET} {{ {_elements(wanted)} }}")
    lines += [
        f"flush chain {GATE_TABLE} {GATE_CHAIN}",
        f"add rule {GATE_TABLE} {GATE_CHAIN} {GATE_RULE}",
    ]
    return "\n".join(lines) + "\n"


def render_open() -> str:
    """Open the gate: the chain is emptied; the set stays for the next close."""
    return "\n".join([*_skeleton(), f"flush chain {GATE_TABLE} {GATE_CHAIN}"]) + "\n"


def render_add(spis: Iterable[int]) -> str:
    """Put ``spis`` under the gate (already gated ones are no-ops); the rule is untouched."""
    return (
        "\n".join([*_skeleton(), f"add element {GATE_TABLE} {GATE_SET} {{ {_elements(spis)} }}"])
        + "\n"
    )


def render_discard(spis: Iterable[int]) -> str:
    """Take ``spis`` out of the set, gated or not (adding first makes the delete safe)."""
    elements = _elements(spis)
    return (
        "\n".join(
            [
                *_skeleton(),
                f"add element {GATE_TABLE} {GATE_SET} {{ {elements} }}",
                f"delete element {GATE_TABLE} {GATE_SET} {{ {elements} }}",
            ]
        )
        + "\n"
    )


def render_probe() -> str:
    """Load the gate's rule into an unhooked chain and take it out again: nothing changes
    but the (empty) table, and a kernel without ``nft_xfrm`` refuses the whole batch."""
    chain = f"{GATE_TABLE} {_PROBE_CHAIN}"
    return (
        "\n".join(
            [
                *_skeleton(),
                f"add chain {chain}",
                f"add rule {chain} {GATE_RULE}",
                f"flush chain {chain}",
                f"delete chain {chain}",
            ]
        )
        + "\n"
    )


def render_removal() -> str:
    """Remove the gate's table, present or not (opens the gate: for the operator only)."""
    return f"add table {GATE_TABLE}\ndelete table {GATE_TABLE}\n"


# -- what the table holds (pure) -----------------------------------------------------


@dataclass(frozen=True)
class GateStatus:
    """The gate's table as listed."""

    present: bool
    closed: bool = False
    """The chain holds the drop rule."""
    gated_spis: int = 0
    """SPIs in the set."""
    dropped_packets: int = 0
    """Packets the rule dropped since the table was made."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "table": GATE_TABLE,
            "present": self.present,
            "closed": self.closed,
            "gated_spis": self.gated_spis,
            "dropped_packets": self.dropped_packets,
        }


def parse_gate_listing(items: list[dict[str, Any]] | None) -> GateStatus:
    """Read ``list table inet ipsec_ha_gate`` (libnftables JSON); None: no table."""
    if items is None:
        return GateStatus(present=False)
    closed = False
    spis = 0
    dropped = 0
    for item in items:
        if "rule" in item and item["rule"].get("chain") == GATE_CHAIN:
            closed = True
        elif "set" in item and item["set"].get("name") == GATE_SET:
            spis = len(item["set"].get("elem", []))
        elif "counter" in item and item["counter"].get("name") == GATE_COUNTER:
            dropped = int(item["counter"].get("packets", 0))
    return GateStatus(present=True, closed=closed, gated_spis=spis, dropped_packets=dropped)


# -- the adapter -----------------------------------------------------------------------


class NftGate:
    """The gate in one network namespace (``None``: the caller's); each call is one batch."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns

    def probe(self) -> None:
        """Raise ``KernelError`` naming what is missing if the gate cannot work here."""
        self._run(render_probe(), "gate probe")

    def close(self, spis: Iterable[int]) -> None:
        """Gate exactly ``spis`` (the set is replaced) and put the rule in."""
        self._run(render_close(spis), "closing of the outbound gate")

    def add(self, spis: Iterable[int]) -> None:
        """Put more SPIs under the gate, before their SAs and policies go in."""
        wanted = list(spis)
        if wanted:
            self._run(render_add(wanted), "addition to the gated SPIs")

    def discard(self, spis: Iterable[int]) -> None:
        """Forget SPIs whose SAs are gone (keeps the set from growing with every rekey)."""
        wanted = list(spis)
        if wanted:
            self._run(render_discard(wanted), "removal from the gated SPIs")

    def open(self) -> None:
        """Take the rule out: ESP of every gated SA may leave."""
        self._run(render_open(), "opening of the outbound gate")

    def status(self) -> GateStatus:
        """The gate as the kernel holds it."""
        command = f"list table {GATE_TABLE}"
        return libnft.session(
            self.netns,
            lambda nft: parse_gate_listing(libnft.list_json_if_present(nft, command, self.netns)),
        )

    def _run(self, script: str, purpose: str) -> None:
        try:
            libnft.run_batch(self.netns, script, purpose)
        except KernelError as exc:
            message = str(exc)
            if "No such file or directory" in message or "Operation not supported" in message:
                raise KernelError(message + _NFT_XFRM_HINT) from None
            raise

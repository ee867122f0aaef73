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

The lease: a daemon that dies while active (a crash that spares the
kernel, or SIGKILL) leaves the gate open, and the kernel goes on encrypting
with the SAs it holds, as long as the VIP's neighbours send it traffic. The
new active node's ESP then interleaves with the orphan's lower sequence
numbers at the peer (replay drops), and once the orphan passes the jump the
same sequence number goes out twice under one key (with AES-GCM, a nonce
reused). So an open gate is leased: the chain holds
``ipsec out spi @gated_spis meta nfproto != @open_lease drop``, and set
``open_lease`` holds ``ipv4`` and ``ipv6`` with a timeout that the active
daemon renews (``render_renew``). Once it stops renewing, the elements expire
and the gate is closed again, by the kernel, within the lease.

Every script below is one libnftables batch: the kernel commits it whole or
not at all.  Each starts by adding the table, set, counter and chain (no-ops
when they exist), so any of them may run first.  The gate's table is
separate from the guard's ``inet ipsec_ha``, so ``ipsec-ha nft remove`` never
opens it.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from appliance.errors import KernelError
from appliance.netns import NetnsWorker
from appliance.nft import libnft
from appliance.nft.render import validate_spis

GATE_FAMILY = "inet"
GATE_TABLE_NAME = "ipsec_ha_gate"
GATE_TABLE = f"{GATE_FAMILY} {GATE_TABLE_NAME}"
GATE_CHAIN = "outbound"
GATE_SET = "gated_spis"
GATE_COUNTER = "gate_dropped"
GATE_RULE = f"ipsec out spi @{GATE_SET} counter name {GATE_COUNTER} drop"
LEASE_SET = "open_lease"
_UNLEASED = f"meta nfproto != @{LEASE_SET} counter name {GATE_COUNTER} drop"
LEASE_RULE = f"ipsec out spi @{GATE_SET} {_UNLEASED}"
"""The open gate's rule: it drops only once the lease's elements have expired."""


def lease_rules(addresses: Iterable[str] = ()) -> list[str]:
    """The open gate's rules: ``LEASE_RULE``, and one per address family of ``addresses``
    (the served VIPs) over the outer source address, which also covers SAs whose SPI
    the gate never held: those an IKE daemon set up or rekeyed while the node was active."""
    by_family: dict[int, list[str]] = {4: [], 6: []}
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise ValueError(f"the gate's lease needs IP addresses, got {text!r}") from None
        if str(address) not in by_family[address.version]:
            by_family[address.version].append(str(address))
    rules = [LEASE_RULE]
    for version, keyword in ((4, "ip"), (6, "ip6")):
        if by_family[version]:
            listed = ", ".join(by_family[version])
            rules.append(f"ipsec out {keyword} saddr {{ {listed} }} {_UNLEASED}")
    return rules


MAX_LEASE_S = 60.0
_PROBE_CHAIN = "probe"
RENEWAL_THREAD_NAME = "ipsec-ha-lease"
"""The thread that renews the lease, by name in /proc (``top -H``)."""

_NFT_XFRM_HINT = (
    " (the gate needs nft_xfrm, CONFIG_NFT_XFRM, for `ipsec out spi`; "
    'without it use [failover] gate = "policy")'
)


# -- rendering (pure) ----------------------------------------------------------------


def _skeleton() -> list[str]:
    return [
        f"add table {GATE_TABLE}",
        f"add set {GATE_TABLE} {GATE_SET} {{ typeof esp spi; }}",
        f"add set {GATE_TABLE} {LEASE_SET} {{ type nf_proto; flags timeout; }}",
        f"add counter {GATE_TABLE} {GATE_COUNTER}",
        f"add chain {GATE_TABLE} {GATE_CHAIN} {{ type filter hook postrouting "
        f"priority filter - 10; policy accept; }}",
    ]


def _elements(spis: Iterable[int]) -> str:
    return ", ".join(f"{spi:#010x}" for spi in validate_spis(spis))


def render_close(spis: Iterable[int]) -> str:
    """Close the gate over exactly ``spis``: the set is replaced, the one rule is put in."""
    wanted = list(spis)
    lines = [
        *_skeleton(),
        f"flush set {GATE_TABLE} {GATE_SET}",
        f"flush set {GATE_TABLE} {LEASE_SET}",
    ]
    if wanted:
        lines.append(f"add element {GATE_TABLE} {GATE_SET} {{ {_elements(wanted)} }}")
    lines += [
        f"flush chain {GATE_TABLE} {GATE_CHAIN}",
        f"add rule {GATE_TABLE} {GATE_CHAIN} {GATE_RULE}",
    ]
    return "\n".join(lines) + "\n"


def _lease_ms(lease_s: float) -> int:
    if isinstance(lease_s, bool) or not isinstance(lease_s, (int, float)):
        raise ValueError(f"the gate lease must be a number of seconds, got {lease_s!r}")
    if not 0 < lease_s <= MAX_LEASE_S:
        raise ValueError(f"the gate lease must be above 0 and at most {MAX_LEASE_S:g} s")
    return max(1, round(lease_s * 1000))


def _lease_lines(lease_s: float) -> list[str]:
    # add (a no-op if present), delete, add: the fresh timeout whether or not the
    # elements had expired, in one transaction, so the lease never lapses in between.
    ms = _lease_ms(lease_s)
    return [
        f"add element {GATE_TABLE} {LEASE_SET} {{ ipv4 timeout {ms}ms, ipv6 timeout {ms}ms }}",
        f"delete element {GATE_TABLE} {LEASE_SET} {{ ipv4, ipv6 }}",
        f"add element {GATE_TABLE} {LEASE_SET} {{ ipv4 timeout {ms}ms, ipv6 timeout {ms}ms }}",
    ]


def render_open(lease_s: float | None = None, lease_addresses: Iterable[str] = ()) -> str:
    """Open the gate. Without a lease the chain is emptied; with one, the chain holds
    ``lease_rules(lease_addresses)`` and the lease runs for ``lease_s`` seconds from now
    (``render_renew`` extends it). The set of gated SPIs stays for the next close."""
    lines = [*_skeleton(), f"flush chain {GATE_TABLE} {GATE_CHAIN}"]
    if lease_s is not None:
        lines += _lease_lines(lease_s)
        lines += [f"add rule {GATE_TABLE} {GATE_CHAIN} {r}" for r in lease_rules(lease_addresses)]
    return "\n".join(lines) + "\n"


def render_renew(lease_s: float) -> str:
    """Run the lease for ``lease_s`` seconds from now. The chain is not touched: on a
    closed gate (the unconditional rule) a renewed lease lets nothing out."""
    return "\n".join([*_skeleton(), *_lease_lines(lease_s)]) + "\n"


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
    """Load the gate's rules into an unhooked chain and take them out again: nothing changes
    but the (empty) table, and a kernel without ``nft_xfrm`` (or without sets with
    timeouts, which the lease needs) refuses the whole batch."""
    chain = f"{GATE_TABLE} {_PROBE_CHAIN}"
    return (
        "\n".join(
            [
                *_skeleton(),
                f"add chain {chain}",
                f"add rule {chain} {LEASE_RULE}",
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
    """The chain holds the unconditional drop rule."""
    leased: bool = False
    """The chain holds the open gate's lease rule (``LEASE_RULE``)."""
    lease_expires_s: float | None = None
    """Seconds until the lease's elements expire (None: none left, the lease lapsed)."""
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
            "leased": self.leased,
            "lease_expires_s": self.lease_expires_s,
            "holding": self.holding,
            "gated_spis": self.gated_spis,
            "dropped_packets": self.dropped_packets,
        }

    @property
    def holding(self) -> bool:
        """Outbound ESP of the gated SPIs is dropped: closed, or a lease that lapsed."""
        return self.closed or (self.leased and self.lease_expires_s is None)


def _is_lease_rule(rule: dict[str, Any]) -> bool:
    return any(
        isinstance(e, dict) and e.get("match", {}).get("right") == f"@{LEASE_SET}"
        for e in rule.get("expr", [])
    )


def parse_gate_listing(items: list[dict[str, Any]] | None) -> GateStatus:
    """Read ``list table inet ipsec_ha_gate`` (libnftables JSON); None: no table."""
    if items is None:
        return GateStatus(present=False)
    closed = leased = False
    expires: list[float] = []
    spis = 0
    dropped = 0
    for item in items:
        if "rule" in item and item["rule"].get("chain") == GATE_CHAIN:
            if _is_lease_rule(item["rule"]):
                leased = True
            else:
                closed = True
        elif "set" in item and item["set"].get("name") == LEASE_SET:
            for elem in item["set"].get("elem", []):
                inner = elem.get("elem") if isinstance(elem, dict) else None
                if isinstance(inner, dict) and "expires" in inner:
                    expires.append(float(inner["expires"]))
        elif "set" in item and item["set"].get("name") == GATE_SET:
            spis = len(item["set"].get("elem", []))
        elif "counter" in item and item["counter"].get("name") == GATE_COUNTER:
            dropped = int(item["counter"].get("packets", 0))
    return GateStatus(
        present=True,
        closed=closed,
        leased=leased,
        lease_expires_s=min(expires) if expires else None,
        gated_spis=spis,
        dropped_packets=dropped,
    )


# -- the adapter -----------------------------------------------------------------------


class NftGate:
    """The gate in one network namespace (``None``: the caller's); each call is one batch."""

    def __init__(
        self, netns: str | None, lease_s: float | None = None, lease_addresses: Iterable[str] = ()
    ) -> None:
        self.lease_addresses = tuple(lease_addresses)
        """The served VIPs: while the lease has lapsed, no ESP leaves from them either."""
        if lease_s is not None:
            _lease_ms(lease_s)  # refuse a bad lease before any gate operation
            lease_rules(self.lease_addresses)
        self.netns = netns
        self.lease_s = lease_s
        """The open gate's lease (None: an open gate stays open until closed)."""
        self._renewal_lock = threading.Lock()
        self._renewal_worker: NetnsWorker | None = None
        self._renewal_context: Any = None

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
        """ESP of every gated SA may leave (for the lease, if there is one)."""
        self._run(render_open(self.lease_s, self.lease_addresses), "opening of the outbound gate")

    def renew(self) -> None:
        """Extend the open gate's lease by ``lease_s`` from now (no lease: nothing to do).

        Renewals come several times a second for as long as the node is active, so
        they keep one libnftables context in one worker thread inside the namespace
        (a fresh context per batch costs four times the CPU, on the host)."""
        if self.lease_s is None:
            return
        script = render_renew(self.lease_s)
        with self._renewal_lock:
            if self._renewal_worker is None:
                self._renewal_worker = NetnsWorker(self.netns, RENEWAL_THREAD_NAME)
            worker = self._renewal_worker
        try:
            worker.run(lambda: self._renew_here(script))
        except KernelError as exc:
            raise KernelError(_with_hint(str(exc))) from None

    def _renew_here(self, script: str) -> None:
        # Runs in the worker's thread only: the context never leaves it.
        if self._renewal_context is None:
            self._renewal_context = libnft.new_context()
        libnft.run_batch_on(
            self._renewal_context, script, "renewal of the outbound gate's lease", self.netns
        )

    def stop_renewals(self) -> None:
        """End the renewals' worker thread, and its context with it (idempotent)."""
        with self._renewal_lock:
            worker, self._renewal_worker = self._renewal_worker, None
        if worker is not None:
            worker.run(self._drop_context)
            worker.close()

    def _drop_context(self) -> None:
        self._renewal_context = None

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
            raise KernelError(_with_hint(str(exc))) from None


def _with_hint(message: str) -> str:
    if "No such file or directory" in message or "Operation not supported" in message:
        return message + _NFT_XFRM_HINT
    return message

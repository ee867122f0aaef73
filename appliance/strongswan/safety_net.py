"""The check after a takeover: does charon hold every IKE SA it was fed? (sans-IO)

A takeover hands charon the stored IKE SAs through its ``ha`` plugin's plain
UDP socket (``feed``) and then activates them.  A datagram charon never read,
or a CHILD SA that the old active made while the takeover was under way, leaves
a tunnel that the store says is up and that charon does not hold.  The daemon
then asks charon through vici what it holds (``list-sas``, ``list-conns``) and
this module compares the two:

* **kept**: charon holds the IKE SA with the same SPIs, ESTABLISHED, with every
  CHILD SA (by inbound kernel SPI);
* **replaced**: charon holds no IKE SA with these SPIs, but an ESTABLISHED one of
  the same connection with the same peer address (the peer ran IKE again, or the
  IKE SA was rekeyed meanwhile);
* **not established**: charon holds it, in another state (PASSIVE: the
  activation did not reach it);
* **children missing**: charon holds the IKE SA without some of its CHILD SAs;
* **missing**: charon holds none of it.

A missing IKE SA, or a missing CHILD SA, is set up again (``initiate``) when the
connection can be initiated from this side: charon has it loaded and its
``remote_addrs`` are all concrete addresses.  A connection that accepts any
peer (``%any``, a range, a subnet) cannot be: only the peer can set the tunnel
up again, at its next IKE exchange (DPD, rekey), and the IKE SA is counted as
**lost**.  Nothing charon holds is ever deleted here.

Input is what the ``vici`` package returns (sections as dicts with ``str``
keys and ``bytes`` values); the adapter is ``vici_client.py``.  Bytes that do
not have vici's shape give a :class:`SafetyNetError`, never another exception.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from appliance.errors import ApplianceError
from appliance.strongswan.ha_message import HaAttributeType, HaHost, HaNumber, HaText
from appliance.strongswan.ike_state import IkeSaState, IkeSpis, kernel_spi

ESTABLISHED = "ESTABLISHED"
"""charon's ``ike_sa_state_t`` name of an IKE SA that carries traffic."""


class SafetyNetError(ApplianceError):
    """charon's vici answer does not have the shape the check reads."""


@dataclass(frozen=True)
class ExpectedIkeSa:
    """An IKE SA charon should hold after a takeover (from the daemon's book)."""

    spis: IkeSpis
    connection: str | None
    """The IKE SA's connection (CONFIG_NAME of its IKE_UPDATE); None if charon never sent
    it (an IKE SA that was not up yet)."""
    remote: str | None
    """The peer's IKE address (REMOTE_ADDR), as text."""
    children: tuple[tuple[str | None, int], ...]
    """Each CHILD SA: its CHILD config name (CONFIG_NAME of its CHILD_ADD) and the kernel
    SPI of its inbound SA."""


def expected_from(state: IkeSaState) -> ExpectedIkeSa:
    """What charon should hold of ``state``."""
    remote = None
    if state.update is not None:
        host = state.update.get(HaAttributeType.REMOTE_ADDR)
        remote = str(host.address) if isinstance(host, HaHost) else None
    if remote is None:
        host = state.add.get(HaAttributeType.REMOTE_ADDR)
        remote = str(host.address) if isinstance(host, HaHost) else None
    children = []
    for child in state.all_children:
        name = child.add.get(HaAttributeType.CONFIG_NAME)
        inbound = child.add.get(HaAttributeType.INBOUND_SPI)
        if isinstance(inbound, HaNumber):
            children.append((name.text if isinstance(name, HaText) else None, kernel_spi(inbound)))
    return ExpectedIkeSa(state.spis, state.config_name, remote, tuple(children))


def steady(before: Iterable[ExpectedIkeSa], after: Iterable[ExpectedIkeSa]) -> list[ExpectedIkeSa]:
    """What charon should hold according to two looks at the book, one before and one after
    charon was asked: the IKE SAs in both, each with the CHILD SAs in both."""
    now = {e.spis: set(e.children) for e in after}
    return [
        replace(e, children=tuple(c for c in e.children if c in now[e.spis]))
        for e in before
        if e.spis in now
    ]


@dataclass(frozen=True)
class HeldIkeSa:
    """An IKE SA charon holds (one entry of vici's ``list-sas``)."""

    connection: str
    spis: IkeSpis
    state: str
    remote: str | None
    inbound_spis: frozenset[int]
    """The inbound kernel SPIs of its CHILD SAs."""


@dataclass(frozen=True)
class Connection:
    """A connection charon has loaded (one entry of vici's ``list-conns``)."""

    name: str
    remote_addrs: tuple[str, ...]
    children: tuple[str, ...]

    @property
    def can_initiate(self) -> bool:
        """Every remote address is one host: charon knows where to send IKE_SA_INIT."""
        return bool(self.remote_addrs) and all(_one_host(a) for a in self.remote_addrs)


def _one_host(text: str) -> bool:
    if text.startswith("%") or "/" in text:
        return False  # %any, %any6, a subnet
    if "-" in text:
        first, _, last = text.partition("-")
        try:
            ipaddress.ip_address(first), ipaddress.ip_address(last)
        except ValueError:
            pass
        else:
            return False  # a range
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return bool(text) and all(c.isalnum() or c in ".-" for c in text)  # a DNS name
    return True


@dataclass(frozen=True)
class Initiate:
    """Set a CHILD SA up again (and its IKE SA, if charon holds none): vici ``initiate``."""

    connection: str
    child: str | None
    spis: IkeSpis
    """The stored IKE SA this replaces."""


@dataclass(frozen=True)
class Verdict:
    """What the check found; ``initiate`` is what the daemon asks charon to do."""

    kept: tuple[IkeSpis, ...] = ()
    replaced: tuple[IkeSpis, ...] = ()
    not_established: tuple[tuple[IkeSpis, str], ...] = ()
    children_missing: tuple[tuple[IkeSpis, int], ...] = ()
    missing: tuple[IkeSpis, ...] = ()
    initiate: tuple[Initiate, ...] = ()
    lost: tuple[tuple[IkeSpis, str], ...] = ()
    """IKE SAs (or CHILD SAs of theirs) not set up again here, with why."""

    def counts(self) -> dict[str, int]:
        return {
            "kept": len(self.kept),
            "replaced": len(self.replaced),
            "not_established": len(self.not_established),
            "children_missing": len(self.children_missing),
            "missing": len(self.missing),
            "to_initiate": len(self.initiate),
            "lost": len(self.lost),
        }

    @property
    def clean(self) -> bool:
        """Every expected IKE SA is held (kept or replaced) with its CHILD SAs."""
        return not (self.not_established or self.children_missing or self.missing)


def check(
    expected: Iterable[ExpectedIkeSa],
    held: Iterable[HeldIkeSa],
    connections: Iterable[Connection],
) -> Verdict:
    """Compare what charon should hold with what it holds (module docstring)."""
    by_spis = {h.spis: h for h in held}
    established = {(h.connection, h.remote) for h in by_spis.values() if h.state == ESTABLISHED}
    conns = {c.name: c for c in connections}
    kept: list[IkeSpis] = []
    replaced: list[IkeSpis] = []
    not_established: list[tuple[IkeSpis, str]] = []
    children_missing: list[tuple[IkeSpis, int]] = []
    missing: list[IkeSpis] = []
    initiate: list[Initiate] = []
    lost: list[tuple[IkeSpis, str]] = []

    def again(e: ExpectedIkeSa, children: list[str | None]) -> None:
        """Initiate ``children`` of ``e``, or say why that cannot be done."""
        conn = conns.get(e.connection) if e.connection is not None else None
        if conn is None:
            why = ("its connection is not known" if e.connection is None
                   else f"charon has no connection {e.connection!r} loaded")  # fmt: skip
            lost.append((e.spis, why))
        elif not conn.can_initiate:
            addrs = ",".join(conn.remote_addrs) or "none"
            why = (f"connection {conn.name!r} accepts any peer (remote_addrs {addrs}): "
                   "only the peer can set it up again")  # fmt: skip
            lost.append((e.spis, why))
        else:
            names = [c for c in children if c is not None and c in conn.children]
            unknown = [c for c in children if c is None or c not in conn.children]
            if unknown:
                lost.append((e.spis, f"connection {conn.name!r} has no CHILD config "
                                     f"{unknown[0]!r}"))  # fmt: skip
            if names or not children:
                for name in dict.fromkeys(names) or [None]:
                    initiate.append(Initiate(conn.name, name, e.spis))

    for e in sorted(expected, key=lambda x: x.spis):
        h = by_spis.get(e.spis)
        if h is None:
            if (e.connection, e.remote) in established:
                replaced.append(e.spis)
            else:
                missing.append(e.spis)
                again(e, [name for name, _ in e.children])
            continue
        if h.state != ESTABLISHED:
            not_established.append((e.spis, h.state))
            continue
        gone = [(name, spi) for name, spi in e.children if spi not in h.inbound_spis]
        if not gone:
            kept.append(e.spis)
            continue
        children_missing.extend((e.spis, spi) for _, spi in gone)
        again(e, [name for name, _ in gone])
    return Verdict(
        tuple(kept), tuple(replaced), tuple(not_established), tuple(children_missing),
        tuple(missing), tuple(initiate), tuple(lost),
    )  # fmt: skip


# -- vici's answers ----------------------------------------------------------------


def _text(section: Mapping[str, Any], key: str, where: str) -> str:
    value = section.get(key)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise SafetyNetError(f"vici {where}: {key} is not UTF-8") from None
    if isinstance(value, str):
        return value
    raise SafetyNetError(f"vici {where}: {key} is missing or not a value ({type(value).__name__})")


def _hex(section: Mapping[str, Any], key: str, where: str, bits: int) -> int:
    text = _text(section, key, where)
    try:
        value = int(text, 16)
    except ValueError:
        raise SafetyNetError(f"vici {where}: {key} {text!r} is not hexadecimal") from None
    if not 0 <= value < 1 << bits:
        raise SafetyNetError(f"vici {where}: {key} {text!r} is not a {bits}-bit SPI")
    return value


def _section(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SafetyNetError(f"vici {where} is not a section ({type(value).__name__})")
    return value


def _entries(events: Iterable[Any], event: str, what: str) -> Iterable[tuple[str, str, Any]]:
    """Each ``{name: section}`` of vici's streamed events: name, where (for errors), section."""
    for found in events:
        for name, body in _section(found, f"{event} event").items():
            where = f"{what} {name!r}"
            yield str(name), where, _section(body, where)


def parse_list_sas(events: Iterable[Any]) -> list[HeldIkeSa]:
    """vici's ``list-sas`` events (each ``{connection: {...}}``) as :class:`HeldIkeSa`."""
    held = []
    for name, where, sa in _entries(events, "list-sa", "IKE SA of"):
        spis = (_hex(sa, "initiator-spi", where, 64), _hex(sa, "responder-spi", where, 64))
        remote = sa.get("remote-host")
        inbound = set()
        for key, child in _section(sa.get("child-sas", {}), f"{where}: child-sas").items():
            child = _section(child, f"{where}: CHILD SA {key!r}")
            if "spi-in" in child:
                inbound.add(_hex(child, "spi-in", f"{where}: CHILD SA {key!r}", 32))
        held.append(HeldIkeSa(
            name, spis, _text(sa, "state", where),
            _text(sa, "remote-host", where) if remote is not None else None,
            frozenset(inbound),
        ))  # fmt: skip
    return held


def parse_list_conns(events: Iterable[Any]) -> list[Connection]:
    """vici's ``list-conns`` events (each ``{connection: {...}}``) as :class:`Connection`."""
    conns = []
    for name, where, conn in _entries(events, "list-conn", "connection"):
        addrs = conn.get("remote_addrs", [])
        if not isinstance(addrs, list) or not all(isinstance(a, bytes) for a in addrs):
            raise SafetyNetError(f"vici {where}: remote_addrs is not a list of values")
        try:
            remote = tuple(a.decode("utf-8") for a in addrs)
        except UnicodeDecodeError:
            raise SafetyNetError(f"vici {where}: remote_addrs is not UTF-8") from None
        children = _section(conn.get("children", {}), f"{where}: children")
        conns.append(Connection(name, remote, tuple(str(c) for c in children)))
    return conns

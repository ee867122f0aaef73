"""Which SAs of a snapshot are outbound on this node.

An SA alone does not say whether this node sends or receives with it. The
rule, in order (documented in docs/model.md):

1. ``XFRMA_SA_DIR`` when the kernel reported it (out = 2, in = 1) decides.
2. Its source address ``saddr`` is one of the node's local addresses.
3. An ``out`` policy has a template that selects it: same proto and mode,
   the template's SPI and reqid are 0 or equal to the SA's, and the
   template's destination equals the SA's ``daddr`` -- or, when the
   template has no destination (transport mode uses the packet's), the
   SA's ``daddr`` lies inside the policy selector's destination prefix.

Rule 3 is what classifies SAs restored into a namespace that has no
addresses yet; it never matches an inbound SA of the same reqid because
their destinations differ.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from appliance.model._common import Address, Direction, SaDir
from appliance.model._sad import SadEntry
from appliance.model._spd import SpdEntry, Template


def _in_selector_destination(address: Address, policy: SpdEntry) -> bool:
    sel = policy.selector
    if sel.daddr.version != address.version:
        return False
    try:
        network = ipaddress.ip_network(f"{sel.daddr}/{sel.prefixlen_d}", strict=False)
    except ValueError:
        return False
    return address in network


def _template_selects(template: Template, sa: SadEntry) -> bool:
    return (
        template.proto == sa.proto
        and template.mode == sa.mode
        and template.spi in (0, sa.spi)
        and template.reqid in (0, sa.reqid)
    )


def classify_outbound(
    sad: Sequence[SadEntry], spd: Sequence[SpdEntry], local_addresses: Iterable[Address] = ()
) -> list[bool]:
    """For each SA of ``sad`` (same order): is it outbound on this node?"""
    local = set(local_addresses)
    by_destination: dict[tuple[int, Address], list[Template]] = {}
    without_destination: list[tuple[Template, SpdEntry]] = []
    for policy in spd:
        if policy.dir != Direction.OUT:
            continue
        for template in policy.templates:
            if template.daddr.is_unspecified:
                without_destination.append((template, policy))
            else:
                by_destination.setdefault((template.proto, template.daddr), []).append(template)
    result = []
    for sa in sad:
        if sa.sa_dir is not None and sa.sa_dir in (SaDir.IN, SaDir.OUT):
            result.append(sa.sa_dir == SaDir.OUT)
            continue
        outbound = sa.saddr in local
        if not outbound:
            outbound = any(
                _template_selects(t, sa) for t in by_destination.get((sa.proto, sa.daddr), ())
            )
        if not outbound:
            outbound = any(
                _template_selects(t, sa) and _in_selector_destination(sa.daddr, p)
                for t, p in without_destination
            )
        result.append(outbound)
    return result

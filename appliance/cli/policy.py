"""``ipsec-ha policy list``: the kernel's IPsec policies (XFRM SPD)."""

from __future__ import annotations

from typing import Any

import typer

from appliance.cli._app import app
from appliance.cli._output import emit
from appliance.cli.sa import JsonOption, NetnsOption, mode_name, proto_name
from appliance.model import Direction, PolicyAction, PolicyFlag, SpdEntry, flag_names

policy_app = typer.Typer(
    help="Inspect the kernel's IPsec policies (XFRM SPD).", no_args_is_help=True
)
app.add_typer(policy_app, name="policy")


def _name(enum_type: type[Direction] | type[PolicyAction], value: int) -> str:
    try:
        return enum_type(value).name.lower()
    except ValueError:
        return str(value)


def render_policy(policy: SpdEntry) -> str:
    """One policy as a few indented lines, in the spirit of ``ip xfrm policy``."""
    sel = policy.selector
    lines = [
        f"src {sel.saddr}/{sel.prefixlen_s} dst {sel.daddr}/{sel.prefixlen_d} "
        f"proto {sel.proto} dir {_name(Direction, policy.dir)}",
        f"  priority {policy.priority} index {policy.index} "
        f"action {_name(PolicyAction, policy.action)} ptype {'sub' if policy.ptype else 'main'} "
        f"flags {' '.join(flag_names(policy.flags, PolicyFlag)) or '-'}",
    ]
    extras = []
    if policy.mark is not None:
        extras.append(f"mark 0x{policy.mark.value:x}/0x{policy.mark.mask:x}")
    if policy.if_id is not None:
        extras.append(f"if_id 0x{policy.if_id:x}")
    if extras:
        lines.append("  " + " ".join(extras))
    for t in policy.templates:
        lines.append(
            f"  tmpl src {t.saddr} dst {t.daddr} proto {proto_name(t.proto)} spi 0x{t.spi:08x} "
            f"reqid {t.reqid} mode {mode_name(t.mode)} level {'use' if t.optional else 'required'}"
        )
    if policy.extra_attrs:
        lines.append("  other attributes: " + " ".join(str(t) for t, _ in policy.extra_attrs))
    return "\n".join(lines)


def dump_policies(netns: str | None) -> list[SpdEntry]:
    """Every policy of ``netns``."""
    from appliance.xfrm.socket import XfrmSocket

    with XfrmSocket(netns) as xfrm:
        return xfrm.dump_spd()


@policy_app.command("list")
def list_policies(netns: NetnsOption = None, as_json: JsonOption = False) -> None:
    """List the IPsec policies (in, out and fwd) of a namespace."""
    policies = dump_policies(netns)
    data: list[dict[str, Any]] = [p.to_dict() for p in policies]

    def render(_: Any) -> str:
        if not policies:
            return "no policies"
        return "\n".join(render_policy(p) for p in policies)

    emit(data, as_json, render)

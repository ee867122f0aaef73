"""``ipsec-ha sa list``: the kernel's SAs (XFRM states), keys hidden by default."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from appliance.cli._app import app
from appliance.cli._output import emit
from appliance.model import (
    IPPROTO_AH,
    IPPROTO_COMP,
    IPPROTO_ESP,
    XFRM_INF,
    KeyMaterial,
    Mode,
    SadEntry,
    StateExtraFlag,
    StateFlag,
    flag_names,
)

sa_app = typer.Typer(help="Inspect the kernel's IPsec SAs (XFRM states).", no_args_is_help=True)
app.add_typer(sa_app, name="sa")

PROTO_NAMES = {IPPROTO_ESP: "esp", IPPROTO_AH: "ah", IPPROTO_COMP: "comp"}

NetnsOption = Annotated[
    str | None,
    typer.Option("--netns", help="Network namespace name (default: the current one)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def proto_name(proto: int) -> str:
    """``esp``, ``ah``, ``comp`` or the number."""
    return PROTO_NAMES.get(proto, str(proto))


def mode_name(mode: int) -> str:
    """``transport``, ``tunnel``, ... or the number."""
    try:
        return Mode(mode).name.lower()
    except ValueError:
        return str(mode)


def _key_text(key: KeyMaterial, show_keys: bool) -> str:
    return "0x" + key.data.hex() if show_keys else f"<{len(key)} bytes hidden>"


def _limit(value: int) -> str:
    return "inf" if value == XFRM_INF else str(value)


def render_sa(sa: SadEntry, show_keys: bool) -> str:
    """One SA as a few indented lines, in the spirit of ``ip xfrm state``."""
    lines = [
        f"src {sa.saddr} dst {sa.daddr} proto {proto_name(sa.proto)} spi 0x{sa.spi:08x} "
        f"reqid {sa.reqid} mode {mode_name(sa.mode)}"
    ]
    flags = flag_names(sa.flags, StateFlag) + flag_names(sa.extra_flags, StateExtraFlag)
    lines.append(f"  replay-window {sa.replay_window} flags {' '.join(flags) or '-'}")
    if sa.aead is not None:
        a = sa.aead
        lines.append(f"  aead {a.name} {_key_text(a.key, show_keys)} {a.key_bits} icv {a.icv_bits}")
    if sa.crypt is not None:
        lines.append(f"  enc {sa.crypt.name} {_key_text(sa.crypt.key, show_keys)}")
    if sa.auth_trunc is not None:
        t = sa.auth_trunc
        lines.append(f"  auth-trunc {t.name} {_key_text(t.key, show_keys)} {t.trunc_bits}")
    elif sa.auth is not None:
        lines.append(f"  auth {sa.auth.name} {_key_text(sa.auth.key, show_keys)}")
    if sa.comp is not None:
        lines.append(f"  comp {sa.comp.name}")
    if sa.encap is not None:
        e = sa.encap
        lines.append(f"  encap type {e.type} sport {e.sport} dport {e.dport} addr {e.oa}")
    extras = []
    if sa.mark is not None:
        extras.append(f"mark 0x{sa.mark.value:x}/0x{sa.mark.mask:x}")
    if sa.output_mark is not None:
        extras.append(f"output-mark 0x{sa.output_mark.value:x}/0x{sa.output_mark.mask:x}")
    if sa.if_id is not None:
        extras.append(f"if_id 0x{sa.if_id:x}")
    if sa.tfcpad is not None:
        extras.append(f"tfcpad {sa.tfcpad}")
    if extras:
        lines.append("  " + " ".join(extras))
    if sa.replay_esn is not None:
        r = sa.replay_esn
        lines.append(f"  esn oseq {r.oseq64} seq {r.seq64} window {r.replay_window}")
    elif sa.replay is not None:
        lines.append(f"  replay oseq {sa.replay.oseq} seq {sa.replay.seq}")
    sel = sa.selector
    lines.append(
        f"  sel src {sel.saddr}/{sel.prefixlen_s} dst {sel.daddr}/{sel.prefixlen_d} "
        f"proto {sel.proto} sport {sel.sport} dport {sel.dport}"
    )
    cfg, cur = sa.lifetime_cfg, sa.lifetime_cur
    lines.append(
        f"  lifetime bytes {_limit(cfg.soft_byte_limit)}/{_limit(cfg.hard_byte_limit)} "
        f"packets {_limit(cfg.soft_packet_limit)}/{_limit(cfg.hard_packet_limit)} "
        f"add {cfg.soft_add_expires_seconds}/{cfg.hard_add_expires_seconds}s; "
        f"used {cur.bytes} bytes {cur.packets} packets"
    )
    if sa.extra_attrs:
        lines.append("  other attributes: " + " ".join(str(t) for t, _ in sa.extra_attrs))
    return "\n".join(lines)


def dump_sas(netns: str | None) -> list[SadEntry]:
    """Every SA of ``netns``."""
    from appliance.xfrm.socket import XfrmSocket

    with XfrmSocket(netns) as xfrm:
        return xfrm.dump_sad()


@sa_app.command("list")
def list_sas(
    netns: NetnsOption = None,
    as_json: JsonOption = False,
    show_keys: Annotated[
        bool,
        typer.Option("--show-keys", help="Show key material (hidden unless asked for)."),
    ] = False,
) -> None:
    """List the SAs of a namespace. Keys are hidden unless --show-keys is given."""
    sas = dump_sas(netns)
    data: list[dict[str, Any]] = [sa.to_dict(redact_keys=not show_keys) for sa in sas]

    def render(_: Any) -> str:
        if not sas:
            return "no SAs"
        return "\n".join(render_sa(sa, show_keys) for sa in sas)

    emit(data, as_json, render)

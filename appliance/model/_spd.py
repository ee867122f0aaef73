"""SPD entry: one kernel XFRM policy (``xfrm_userpolicy_info`` and its attributes)."""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.model._common import (
    AF_INET,
    IPPROTO_ESP,
    ZERO4,
    Address,
    LifetimeCfg,
    LifetimeCur,
    Mark,
    OffloadDev,
    SecCtx,
    Selector,
    _Checked,
    _opt_uint,
    _uint,
)
from appliance.model._sad import SPD_ENTRY_FORMAT, _check_extra_attrs, _Entry


@dataclass(frozen=True, slots=True)
class Template(_Checked):
    """``struct xfrm_user_tmpl``: one transform a policy requires."""

    daddr: Address = ZERO4
    spi: int = _uint(32)
    proto: int = _uint(8, IPPROTO_ESP)
    family: int = _uint(16, AF_INET)
    saddr: Address = ZERO4
    reqid: int = _uint(32)
    mode: int = _uint(8)
    share: int = _uint(8)
    optional: int = _uint(8)
    """1 for ``level use``: the transform may be missing."""
    aalgos: int = _uint(32, 0xFFFFFFFF)
    ealgos: int = _uint(32, 0xFFFFFFFF)
    calgos: int = _uint(32, 0xFFFFFFFF)

    _FAMILY_CHECKS = (("family", ("daddr", "saddr")),)


@dataclass(frozen=True, slots=True)
class SpdEntry(_Entry):
    """One XFRM policy. See ``SadEntry`` for ``None`` and ``extra_attrs``."""

    _FORMAT = SPD_ENTRY_FORMAT
    _KIND = "spd"

    selector: Selector
    dir: int = _uint(8)
    """``XFRM_POLICY_*`` (see ``Direction``): 0 in, 1 out, 2 fwd."""
    priority: int = _uint(32)
    index: int = _uint(32)
    action: int = _uint(8)
    """0 allow, 1 block."""
    flags: int = _uint(8)
    share: int = _uint(8)
    lifetime_cfg: LifetimeCfg = field(default_factory=LifetimeCfg)
    lifetime_cur: LifetimeCur = field(default_factory=LifetimeCur)
    templates: tuple[Template, ...] = ()
    ptype: int = _uint(8)
    """XFRMA_POLICY_TYPE: 0 main, 1 sub (absent means main)."""
    mark: Mark | None = None
    if_id: int | None = _opt_uint(32)
    offload: OffloadDev | None = None
    sec_ctx: SecCtx | None = None
    extra_attrs: tuple[tuple[int, bytes], ...] = ()

    def __post_init__(self) -> None:
        _Checked.__post_init__(self)
        _check_extra_attrs("SpdEntry", self.extra_attrs)

    def label(self) -> str:
        """A short name for messages: ``policy dir out src ... dst ...``."""
        names = {0: "in", 1: "out", 2: "fwd"}
        sel = self.selector
        return (
            f"policy {names.get(self.dir, str(self.dir))} "
            f"src {sel.saddr}/{sel.prefixlen_s} dst {sel.daddr}/{sel.prefixlen_d}"
            f" index {self.index}"
        )

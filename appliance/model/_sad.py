"""SAD entry: one kernel XFRM state (``xfrm_usersa_info`` and its attributes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from appliance.model._codec import decode_object, encode_object, from_canonical, to_canonical
from appliance.model._common import (
    AF_INET,
    IPPROTO_ESP,
    ZERO4,
    Address,
    KeyMaterial,
    LifetimeCfg,
    LifetimeCur,
    Mark,
    ModelError,
    OffloadDev,
    SecCtx,
    Selector,
    StateFlag,
    _Checked,
    _opt_uint,
    _uint,
)

SAD_ENTRY_FORMAT = "ipsec-ha/sad-entry"
SPD_ENTRY_FORMAT = "ipsec-ha/spd-entry"


class _Entry(_Checked):
    """What an SAD and an SPD entry share: their dict and canonical-bytes forms."""

    __slots__ = ()
    _FORMAT: ClassVar[str]
    """The canonical form's name and version key (``to_canonical``)."""
    _KIND: ClassVar[str]
    """``sad`` or ``spd``: how ``decode_object`` names the entry in its errors."""

    def to_dict(self, *, redact_keys: bool = False) -> dict[str, Any]:
        """JSON-ready dict (binary as hex). ``redact_keys`` replaces keys by null."""
        result: dict[str, Any] = encode_object(self, redact_keys=redact_keys)
        return result

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Inverse of ``to_dict`` (without redaction); bad input raises ``ModelError``."""
        entry: Self = decode_object(cls, data, cls._KIND)
        return entry

    def to_bytes(self) -> bytes:
        """Canonical, versioned bytes: equal entries give equal bytes."""
        return to_canonical(self._FORMAT, {"entry": self.to_dict()})

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Inverse of ``to_bytes``; an unknown version raises ``UnsupportedVersionError``."""
        body = from_canonical(cls._FORMAT, data)
        return cls.from_dict(body.get("entry"))


@dataclass(frozen=True, slots=True)
class Algorithm(_Checked):
    """``struct xfrm_algo``: XFRMA_ALG_CRYPT, XFRMA_ALG_AUTH and XFRMA_ALG_COMP."""

    name: str
    key_bits: int = _uint(32)
    """``alg_key_len``: the key length in bits (the key holds ceil(bits/8) bytes)."""
    key: KeyMaterial = field(default_factory=lambda: KeyMaterial(b""))


@dataclass(frozen=True, slots=True)
class AuthTruncAlgorithm(_Checked):
    """``struct xfrm_algo_auth``: XFRMA_ALG_AUTH_TRUNC."""

    name: str
    key_bits: int = _uint(32)
    trunc_bits: int = _uint(32)
    key: KeyMaterial = field(default_factory=lambda: KeyMaterial(b""))


@dataclass(frozen=True, slots=True)
class AeadAlgorithm(_Checked):
    """``struct xfrm_algo_aead``: XFRMA_ALG_AEAD."""

    name: str
    key_bits: int = _uint(32)
    icv_bits: int = _uint(32)
    key: KeyMaterial = field(default_factory=lambda: KeyMaterial(b""))


@dataclass(frozen=True, slots=True)
class ReplayState(_Checked):
    """``struct xfrm_replay_state`` (XFRMA_REPLAY_VAL): 32-bit sequence space."""

    oseq: int = _uint(32)
    seq: int = _uint(32)
    bitmap: int = _uint(32)


@dataclass(frozen=True, slots=True)
class ReplayStateEsn(_Checked):
    """``struct xfrm_replay_state_esn`` (XFRMA_REPLAY_ESN_VAL): 64-bit sequence space.

    The full outbound sequence number is ``oseq_hi << 32 | oseq``.
    """

    bmp_len: int = _uint(32)
    """Number of 32-bit words in ``bmp``."""
    oseq: int = _uint(32)
    seq: int = _uint(32)
    oseq_hi: int = _uint(32)
    seq_hi: int = _uint(32)
    replay_window: int = _uint(32)
    bmp: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _Checked.__post_init__(self)
        if len(self.bmp) != self.bmp_len:
            raise ModelError(
                f"ReplayStateEsn.bmp has {len(self.bmp)} words but bmp_len is {self.bmp_len}"
            )
        for word in self.bmp:
            if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word < 1 << 32:
                raise ModelError(f"ReplayStateEsn.bmp word {word!r} is not an unsigned 32-bit int")

    @property
    def oseq64(self) -> int:
        """The 64-bit outbound sequence number."""
        return self.oseq_hi << 32 | self.oseq

    @property
    def seq64(self) -> int:
        """The 64-bit highest inbound sequence number seen."""
        return self.seq_hi << 32 | self.seq


@dataclass(frozen=True, slots=True)
class Stats(_Checked):
    """``struct xfrm_stats``."""

    replay_window: int = _uint(32)
    replay: int = _uint(32)
    integrity_failed: int = _uint(32)


@dataclass(frozen=True, slots=True)
class Encap(_Checked):
    """``struct xfrm_encap_tmpl`` (XFRMA_ENCAP): NAT-T / ESP-in-UDP."""

    type: int = _uint(16)
    """UDP_ENCAP_ESPINUDP = 2, UDP_ENCAP_ESPINUDP_NON_IKE = 1, TCP_ENCAP_ESPINTCP = 7."""
    sport: int = _uint(16)
    dport: int = _uint(16)
    oa: Address = ZERO4
    """``encap_oa``: the original address before NAT (xfrm_address_t of the SA family)."""


def _check_extra_attrs(owner: str, extra_attrs: tuple[tuple[int, bytes], ...]) -> None:
    for item in extra_attrs:
        if (
            not isinstance(item, tuple)
            or len(item) != 2
            or isinstance(item[0], bool)
            or not isinstance(item[0], int)
            or not 0 <= item[0] < 1 << 16
            or not isinstance(item[1], bytes)
        ):
            raise ModelError(f"{owner}.extra_attrs item {item!r} is not (nla type, bytes)")


@dataclass(frozen=True, slots=True)
class SadEntry(_Entry):
    """One XFRM state: the header ``xfrm_usersa_info`` and every attribute.

    Optional attributes are ``None`` when the kernel did not return them.
    ``extra_attrs`` holds, as raw ``(nla type, payload)``, every attribute the
    converter does not model, so that a restore puts them back unchanged.
    """

    _FORMAT = SAD_ENTRY_FORMAT
    _KIND = "sad"

    # xfrm_usersa_info.id (struct xfrm_id)
    daddr: Address
    spi: int = _uint(32)
    """Host byte order (the kernel keeps it big-endian on the wire)."""
    proto: int = _uint(8, IPPROTO_ESP)
    # rest of xfrm_usersa_info
    saddr: Address = ZERO4
    family: int = _uint(16, AF_INET)
    mode: int = _uint(8)
    """``XFRM_MODE_*`` (see ``Mode``): 0 transport, 1 tunnel, 2 ro, 3 in_trigger, 4 beet."""
    reqid: int = _uint(32)
    seq: int = _uint(32)
    """``xfrm_usersa_info.seq``: the acquire sequence the SA answered (usually 0)."""
    replay_window: int = _uint(8)
    flags: int = _uint(8)
    """``XFRM_STATE_*`` bits (see ``StateFlag``)."""
    selector: Selector = field(default_factory=Selector)
    lifetime_cfg: LifetimeCfg = field(default_factory=LifetimeCfg)
    lifetime_cur: LifetimeCur = field(default_factory=LifetimeCur)
    stats: Stats = field(default_factory=Stats)
    # attributes
    extra_flags: int = _uint(32)
    """XFRMA_SA_EXTRA_FLAGS (``XFRM_SA_XFLAG_*``; the kernel omits it when 0)."""
    crypt: Algorithm | None = None
    auth: Algorithm | None = None
    auth_trunc: AuthTruncAlgorithm | None = None
    """The kernel returns both XFRMA_ALG_AUTH and XFRMA_ALG_AUTH_TRUNC for one auth key."""
    aead: AeadAlgorithm | None = None
    comp: Algorithm | None = None
    replay: ReplayState | None = None
    replay_esn: ReplayStateEsn | None = None
    encap: Encap | None = None
    coaddr: Address | None = None
    """XFRMA_COADDR (Mobile IPv6 care-of address)."""
    mark: Mark | None = None
    output_mark: Mark | None = None
    """XFRMA_SET_MARK and XFRMA_SET_MARK_MASK."""
    if_id: int | None = _opt_uint(32)
    tfcpad: int | None = _opt_uint(32)
    replay_thresh: int | None = _opt_uint(32)
    etimer_thresh: int | None = _opt_uint(32)
    sa_dir: int | None = _opt_uint(8)
    """XFRMA_SA_DIR (see ``SaDir``): 1 in, 2 out."""
    lastused: int | None = _opt_uint(64)
    offload: OffloadDev | None = None
    sec_ctx: SecCtx | None = None
    extra_attrs: tuple[tuple[int, bytes], ...] = ()

    _FAMILY_CHECKS = (("family", ("daddr", "saddr")),)

    def __post_init__(self) -> None:
        _Checked.__post_init__(self)
        _check_extra_attrs("SadEntry", self.extra_attrs)

    @property
    def esn(self) -> bool:
        """The SA uses 64-bit extended sequence numbers (``flag esn``).

        Not the same as having ``replay_esn``: the kernel also keeps the
        replay state of a non-ESN SA in that structure when its window is
        larger than 32 packets; such an SA still counts in 32 bits.
        """
        return bool(self.flags & StateFlag.ESN)

    @property
    def oseq64(self) -> int | None:
        """The outbound sequence number (hi:lo for ESN SAs), or None if the kernel gave none."""
        if self.replay_esn is not None:
            return self.replay_esn.oseq64 if self.esn else self.replay_esn.oseq
        if self.replay is not None:
            return self.replay.oseq
        return None

    def label(self) -> str:
        """A short, key-free name for messages: ``SA spi 0x... dst ...``."""
        return f"SA spi 0x{self.spi:08x} dst {self.daddr} proto {self.proto}"

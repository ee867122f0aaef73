"""Building blocks shared by SAD and SPD entries.

Everything here mirrors a kernel structure from ``include/uapi/linux/xfrm.h``
field for field, so that conversion to and from netlink loses nothing.
Integer fields keep the kernel's numbers (modes, directions, flags) even
where an enum names them: a value this code does not know must still survive
a round trip.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from appliance.errors import ApplianceError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

AF_UNSPEC = 0
AF_INET = 2
AF_INET6 = 10

IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_COMP = 108
XFRM_PROTO_ANY = 255

XFRM_INF = (1 << 64) - 1
"""The kernel's "no limit" value in ``xfrm_lifetime_cfg``."""


class ModelError(ApplianceError):
    """A model value or a serialised model document is invalid."""


class UnsupportedVersionError(ModelError):
    """A serialised document comes from a format version this code does not know."""


class Mode(enum.IntEnum):
    """``XFRM_MODE_*``: the SA / template encapsulation mode."""

    TRANSPORT = 0
    TUNNEL = 1
    ROUTEOPTIMIZATION = 2
    IN_TRIGGER = 3
    BEET = 4


class Direction(enum.IntEnum):
    """``XFRM_POLICY_IN/OUT/FWD``."""

    IN = 0
    OUT = 1
    FWD = 2


class PolicyAction(enum.IntEnum):
    """``XFRM_POLICY_ALLOW/BLOCK``."""

    ALLOW = 0
    BLOCK = 1


class PolicyType(enum.IntEnum):
    """``XFRM_POLICY_TYPE_MAIN/SUB``."""

    MAIN = 0
    SUB = 1


class SaDir(enum.IntEnum):
    """``XFRM_SA_DIR_IN/OUT`` (attribute ``XFRMA_SA_DIR``, Linux 6.10+)."""

    IN = 1
    OUT = 2


class StateFlag(enum.IntFlag):
    """``XFRM_STATE_*`` bits of ``xfrm_usersa_info.flags``."""

    NOECN = 1
    DECAP_DSCP = 2
    NOPMTUDISC = 4
    WILDRECV = 8
    ICMP = 16
    AF_UNSPEC = 32
    ALIGN4 = 64
    ESN = 128


class StateExtraFlag(enum.IntFlag):
    """``XFRM_SA_XFLAG_*`` bits of ``XFRMA_SA_EXTRA_FLAGS``."""

    DONT_ENCAP_DSCP = 1
    OSEQ_MAY_WRAP = 2


class PolicyFlag(enum.IntFlag):
    """``XFRM_POLICY_*`` bits of ``xfrm_userpolicy_info.flags``."""

    LOCALOK = 1
    ICMP = 2


def flag_names(value: int, flag_type: type[enum.IntFlag]) -> list[str]:
    """Names of the bits set in ``value``; unknown bits as hex, so nothing is hidden."""
    names: list[str] = []
    rest = value
    for member in flag_type:
        if value & member.value:
            names.append(str(member.name).lower().replace("_", "-"))
            rest &= ~member.value
    if rest:
        names.append(hex(rest))
    return names


@functools.lru_cache(maxsize=1 << 16)
def address_from_xfrm(family: int, raw: bytes) -> Address:
    """Decode a kernel ``xfrm_address_t`` (16 bytes; IPv4 in the first 4).

    For AF_INET the address is IPv4; for any other family (AF_INET6, and
    AF_UNSPEC selectors of ``flag af-unspec`` SAs) the 16 bytes are kept as an
    IPv6 address, so that encoding it again gives the same bytes.  Cached: a
    gateway's entries repeat a few addresses thousands of times, and address
    objects are immutable.
    """
    if len(raw) != 16:
        raise ModelError(f"xfrm_address_t must be 16 bytes, got {len(raw)}")
    if family == AF_INET:
        return ipaddress.IPv4Address(raw[:4])
    return ipaddress.IPv6Address(raw)


@functools.lru_cache(maxsize=1 << 16)
def address_to_xfrm(address: Address) -> bytes:
    """Encode an address as a kernel ``xfrm_address_t`` (16 bytes, zero padded).

    Cached: a restore encodes the same few addresses tens of thousands of times.
    """
    return address.packed.ljust(16, b"\0")


def family_of(address: Address) -> int:
    """AF_INET or AF_INET6 for an address object."""
    return AF_INET if address.version == 4 else AF_INET6


ZERO4 = ipaddress.IPv4Address(0)
ZERO6 = ipaddress.IPv6Address(0)


def _uint(bits: int, default: int = 0) -> Any:
    """A dataclass field holding an unsigned integer of ``bits`` bits (checked)."""
    return field(default=default, metadata={"bits": bits})


def _opt_uint(bits: int) -> Any:
    """An optional unsigned integer field: ``None`` means "attribute absent"."""
    return field(default=None, metadata={"bits": bits})


_INT_FIELDS: dict[type, tuple[tuple[str, int, int], ...]] = {}


def _int_fields(cls: type) -> tuple[tuple[str, int, int], ...]:
    """(name, bits, 2**bits) of each range-checked field of ``cls``."""
    spec = _INT_FIELDS.get(cls)
    if spec is None:
        spec = tuple(
            (f.name, f.metadata["bits"], 1 << f.metadata["bits"])
            for f in fields(cls)
            if "bits" in f.metadata
        )
        _INT_FIELDS[cls] = spec
    return spec


_FAST_CHECKS: dict[type, Callable[[Any], bool]] = {}


def _fast_check(cls: type) -> Callable[[Any], bool]:
    """A generated function: True when every check of ``cls`` passes the common way.

    Snapshots build tens of thousands of objects; one boolean expression per
    class costs a fraction of the generic loop. False (an int subclass, a
    ``None``, a bad value) sends the object through ``_Checked._check``, which
    decides and names the problem.
    """
    check = _FAST_CHECKS.get(cls)
    if check is None:
        optional = {f.name for f in fields(cls) if f.default is None}
        terms = [
            f"(type(o.{name}) is int and 0 <= o.{name} < {limit})"
            if name not in optional
            else f"(o.{name} is None or type(o.{name}) is int and 0 <= o.{name} < {limit})"
            for name, _, limit in _int_fields(cls)
        ]
        for family_field, address_fields in getattr(cls, "_FAMILY_CHECKS", ()):
            terms += [
                f"type(o.{name}) is (V4 if o.{family_field} == {AF_INET} else V6)"
                for name in address_fields
            ]
        namespace: dict[str, Any] = {"V4": ipaddress.IPv4Address, "V6": ipaddress.IPv6Address}
        exec(f"def check(o):\n    return {' and '.join(terms) or 'True'}", namespace)
        check = namespace["check"]
        _FAST_CHECKS[cls] = check
    return check


class _Checked:
    """Range checks for integer fields declared with ``_uint``/``_opt_uint``.

    Values come from files and from the network; a bad one must fail here,
    with its name, not later as a struct packing error.
    """

    __slots__ = ()
    _FAMILY_CHECKS: ClassVar[tuple[tuple[str, tuple[str, ...]], ...]] = ()

    def __post_init__(self) -> None:
        cls = type(self)
        check = _FAST_CHECKS.get(cls) or _fast_check(cls)
        if not check(self):
            self._check()

    def _check(self) -> None:
        """The checks one by one: raise ``ModelError`` naming the first bad field."""
        for name, bits, limit in _int_fields(type(self)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ModelError(f"{type(self).__name__}.{name} must be an integer, got {value!r}")
            if not 0 <= value < limit:
                raise ModelError(
                    f"{type(self).__name__}.{name} = {value} is out of range "
                    f"for an unsigned {bits}-bit field"
                )
        for family_field, address_fields in self._FAMILY_CHECKS:
            wanted = 4 if getattr(self, family_field) == AF_INET else 6
            for name in address_fields:
                address = getattr(self, name)
                if getattr(address, "version", None) == wanted:
                    continue
                if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
                    raise ModelError(
                        f"{type(self).__name__}.{name} must be an IP address, got {address!r}"
                    )
                raise ModelError(
                    f"{type(self).__name__}.{name} = {address} does not match "
                    f"family {getattr(self, family_field)} (AF_INET=2 needs IPv4, "
                    "other families IPv6)"
                )


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """Key material. Its repr and str never show the bytes (keys never reach logs)."""

    data: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes):
            raise ModelError("key material must be bytes")

    def __repr__(self) -> str:
        return f"KeyMaterial(<{len(self.data)} bytes redacted>)"

    __str__ = __repr__

    def __len__(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class Selector(_Checked):
    """``struct xfrm_selector``: the traffic an SA or policy applies to."""

    daddr: Address = ZERO4
    saddr: Address = ZERO4
    dport: int = _uint(16)
    dport_mask: int = _uint(16)
    sport: int = _uint(16)
    sport_mask: int = _uint(16)
    family: int = _uint(16, AF_INET)
    prefixlen_d: int = _uint(8)
    prefixlen_s: int = _uint(8)
    proto: int = _uint(8)
    ifindex: int = _uint(32)
    """Signed ``int`` in the kernel; kept as its unsigned 32-bit pattern."""
    user: int = _uint(32)
    """``__kernel_uid32_t``."""

    _FAMILY_CHECKS = (("family", ("daddr", "saddr")),)


@dataclass(frozen=True, slots=True)
class LifetimeCfg(_Checked):
    """``struct xfrm_lifetime_cfg``: configured soft/hard limits (XFRM_INF = none)."""

    soft_byte_limit: int = _uint(64, XFRM_INF)
    hard_byte_limit: int = _uint(64, XFRM_INF)
    soft_packet_limit: int = _uint(64, XFRM_INF)
    hard_packet_limit: int = _uint(64, XFRM_INF)
    soft_add_expires_seconds: int = _uint(64)
    hard_add_expires_seconds: int = _uint(64)
    soft_use_expires_seconds: int = _uint(64)
    hard_use_expires_seconds: int = _uint(64)


@dataclass(frozen=True, slots=True)
class LifetimeCur(_Checked):
    """``struct xfrm_lifetime_cur``: current counters and timestamps."""

    bytes: int = _uint(64)
    packets: int = _uint(64)
    add_time: int = _uint(64)
    use_time: int = _uint(64)


@dataclass(frozen=True, slots=True)
class Mark(_Checked):
    """``struct xfrm_mark`` (value and mask); also the output mark pair."""

    value: int = _uint(32)
    mask: int = _uint(32)


@dataclass(frozen=True, slots=True)
class SecCtx(_Checked):
    """``struct xfrm_user_sec_ctx`` plus its context string (XFRMA_SEC_CTX)."""

    ctx_doi: int = _uint(8)
    ctx_alg: int = _uint(8)
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class OffloadDev(_Checked):
    """``struct xfrm_user_offload`` (XFRMA_OFFLOAD_DEV)."""

    ifindex: int = _uint(32)
    """Signed ``int`` in the kernel; kept as its unsigned 32-bit pattern."""
    flags: int = _uint(8)

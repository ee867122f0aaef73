"""The oracle's XFRM netlink messages, declared like pyroute2 declares ``ifaddrmsg``.

The product never imports this module: its codec (``appliance.xfrm.codec``)
packs the same structs by hand, and the unit tests hold it to these
declarations (``tests/xfrm/test_xfrm_codec.py``, ``test_xfrm_recordings.py``).

One class per kernel struct of ``include/uapi/linux/xfrm.h``, named after it,
its docstring quoting the C struct.  ``fields`` list the fixed part in C
order with the padding the x86_64 compiler inserts written out (``__padN``),
so a reader can check each line against the header; ``tests/xfrm`` asserts
every size.  Struct members that are themselves structs (``sel``, ``id``,
``lft`` ...) use a :class:`CStruct` subclass as the field type, which pyroute2
calls through ``decode_from`` / ``encode_into`` and which yields a dict.

Addresses (``xfrm_address_t``) stay 16 raw bytes here: their meaning depends
on a family field elsewhere, and raw bytes survive a round trip exactly.
``convert`` turns them into ``ipaddress`` objects.

Every message class shares one ``nla_map`` (all ``XFRMA_*`` attributes of
Linux 6.18).  Attribute types the header does not know yet decode as
``XFRMA_<n>`` with their raw payload and encode back unchanged.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar

from pyroute2.netlink import nla, nlmsg

from appliance.xfrm import constants as c

_ADDR = "16s"
"""``xfrm_address_t``: a 16-byte union, 4-byte aligned."""

UNKNOWN_ATTR_LIMIT = 128
"""Attribute types up to this number decode even when the header lacks them."""


class CStruct:
    """A fixed-size C struct used as a field type inside an nlmsg/nla.

    ``fields`` is a tuple of ``(name, format)``; the format is a ``struct``
    code (native byte order unless it starts with ``>``), a nested
    :class:`CStruct` subclass, or ``Nx`` padding (names starting with ``_``).
    """

    fields: ClassVar[tuple[tuple[str, Any], ...]] = ()
    size: ClassVar[int] = 0
    _plan: ClassVar[list[tuple[str, Any, int]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        plan: list[tuple[str, Any, int]] = []
        size = 0
        for name, fmt in cls.fields:
            if isinstance(fmt, type) and issubclass(fmt, CStruct):
                plan.append((name, fmt, size))
                size += fmt.size
            else:
                plan.append((name, struct.Struct(fmt if fmt[0] in "<>!=" else "=" + fmt), size))
                size += struct.calcsize("=" + fmt.lstrip("<>!="))
        cls._plan = plan
        cls.size = size

    @classmethod
    def zero(cls) -> dict[str, Any]:
        """A value with every member zero."""
        return cls.decode_from(bytes(cls.size), 0)[0]

    @classmethod
    def decode_from(cls, data: bytes | bytearray, offset: int) -> tuple[dict[str, Any], int]:
        value: dict[str, Any] = {}
        for name, fmt, at in cls._plan:
            if name[0] == "_":
                continue
            if isinstance(fmt, struct.Struct):
                value[name] = fmt.unpack_from(data, offset + at)[0]
            else:
                value[name] = fmt.decode_from(data, offset + at)[0]
        return value, offset + cls.size

    @classmethod
    def encode_into(cls, data: bytearray, offset: int, value: Any) -> int:
        end = offset + cls.size
        if len(data) < end:
            data.extend(bytes(end - len(data)))
        if not isinstance(value, dict):
            value = {}  # pyroute2 passes 0 for an unset field: all zero
        for name, fmt, at in cls._plan:
            if name[0] == "_":
                continue
            if isinstance(fmt, struct.Struct):
                fmt.pack_into(
                    data, offset + at, value.get(name, b"" if fmt.format[-1] == "s" else 0)
                )
            else:
                fmt.encode_into(data, offset + at, value.get(name))
        return end


class xfrm_selector(CStruct):
    """Selector, used on both policies (SPD) and SAs.

    C structure::

        struct xfrm_selector {
            xfrm_address_t  daddr;
            xfrm_address_t  saddr;
            __be16  dport;
            __be16  dport_mask;
            __be16  sport;
            __be16  sport_mask;
            __u16   family;
            __u8    prefixlen_d;
            __u8    prefixlen_s;
            __u8    proto;
            int     ifindex;
            __kernel_uid32_t        user;
        };
    """

    fields = (
        ("daddr", _ADDR),
        ("saddr", _ADDR),
        ("dport", ">H"),
        ("dport_mask", ">H"),
        ("sport", ">H"),
        ("sport_mask", ">H"),
        ("family", "H"),
        ("prefixlen_d", "B"),
        ("prefixlen_s", "B"),
        ("proto", "B"),
        ("__pad0", "3x"),
        ("ifindex", "i"),
        ("user", "I"),
    )


class xfrm_id(CStruct):
    """Ident of a specific xfrm_state.

    C structure::

        struct xfrm_id {
            xfrm_address_t  daddr;
            __be32          spi;
            __u8            proto;
        };
    """

    fields = (("daddr", _ADDR), ("spi", ">I"), ("proto", "B"), ("__pad0", "3x"))


class xfrm_lifetime_cfg(CStruct):
    """Configured limits.

    C structure::

        struct xfrm_lifetime_cfg {
            __u64   soft_byte_limit;
            __u64   hard_byte_limit;
            __u64   soft_packet_limit;
            __u64   hard_packet_limit;
            __u64   soft_add_expires_seconds;
            __u64   hard_add_expires_seconds;
            __u64   soft_use_expires_seconds;
            __u64   hard_use_expires_seconds;
        };
    """

    fields = (
        ("soft_byte_limit", "Q"),
        ("hard_byte_limit", "Q"),
        ("soft_packet_limit", "Q"),
        ("hard_packet_limit", "Q"),
        ("soft_add_expires_seconds", "Q"),
        ("hard_add_expires_seconds", "Q"),
        ("soft_use_expires_seconds", "Q"),
        ("hard_use_expires_seconds", "Q"),
    )


class xfrm_lifetime_cur(CStruct):
    """Current counters.

    C structure::

        struct xfrm_lifetime_cur {
            __u64   bytes;
            __u64   packets;
            __u64   add_time;
            __u64   use_time;
        };
    """

    fields = (("bytes", "Q"), ("packets", "Q"), ("add_time", "Q"), ("use_time", "Q"))


class xfrm_stats(CStruct):
    """SA statistics.

    C structure::

        struct xfrm_stats {
            __u32   replay_window;
            __u32   replay;
            __u32   integrity_failed;
        };
    """

    fields = (("replay_window", "I"), ("replay", "I"), ("integrity_failed", "I"))


class xfrm_usersa_id_struct(CStruct):
    """``struct xfrm_usersa_id`` as a member of ``xfrm_aevent_id``/``xfrm_user_mapping``."""

    fields = (
        ("daddr", _ADDR),
        ("spi", ">I"),
        ("family", "H"),
        ("proto", "B"),
        ("__pad0", "x"),
    )


class xfrm_usersa_info_struct(CStruct):
    """``struct xfrm_usersa_info`` as a member (``xfrm_userspi_info``, ``xfrm_user_expire``)."""

    fields = (
        ("sel", xfrm_selector),
        ("id", xfrm_id),
        ("saddr", _ADDR),
        ("lft", xfrm_lifetime_cfg),
        ("curlft", xfrm_lifetime_cur),
        ("stats", xfrm_stats),
        ("seq", "I"),
        ("reqid", "I"),
        ("family", "H"),
        ("mode", "B"),
        ("replay_window", "B"),
        ("flags", "B"),
        ("__pad0", "7x"),
    )


class xfrm_userpolicy_info_struct(CStruct):
    """``struct xfrm_userpolicy_info`` as a member (``xfrm_user_acquire``, ``polexpire``)."""

    fields = (
        ("sel", xfrm_selector),
        ("lft", xfrm_lifetime_cfg),
        ("curlft", xfrm_lifetime_cur),
        ("priority", "I"),
        ("index", "I"),
        ("dir", "B"),
        ("action", "B"),
        ("flags", "B"),
        ("share", "B"),
        ("__pad0", "4x"),
    )


class xfrm_user_tmpl(CStruct):
    """One template of a policy (XFRMA_TMPL carries an array of them).

    C structure::

        struct xfrm_user_tmpl {
            struct xfrm_id          id;
            __u16                   family;
            xfrm_address_t          saddr;
            __u32                   reqid;
            __u8                    mode;
            __u8                    share;
            __u8                    optional;
            __u32                   aalgos;
            __u32                   ealgos;
            __u32                   calgos;
        };
    """

    fields = (
        ("id", xfrm_id),
        ("family", "H"),
        ("__pad0", "2x"),
        ("saddr", _ADDR),
        ("reqid", "I"),
        ("mode", "B"),
        ("share", "B"),
        ("optional", "B"),
        ("__pad1", "x"),
        ("aalgos", "I"),
        ("ealgos", "I"),
        ("calgos", "I"),
    )


class xfrm_user_migrate(CStruct):
    """One SA move of a MIGRATE (XFRMA_MIGRATE carries an array of them).

    C structure::

        struct xfrm_user_migrate {
            xfrm_address_t          old_daddr;
            xfrm_address_t          old_saddr;
            xfrm_address_t          new_daddr;
            xfrm_address_t          new_saddr;
            __u8                    proto;
            __u8                    mode;
            __u16                   reserved;
            __u32                   reqid;
            __u16                   old_family;
            __u16                   new_family;
        };
    """

    fields = (
        ("old_daddr", _ADDR),
        ("old_saddr", _ADDR),
        ("new_daddr", _ADDR),
        ("new_saddr", _ADDR),
        ("proto", "B"),
        ("mode", "B"),
        ("reserved", "H"),
        ("reqid", "I"),
        ("old_family", "H"),
        ("new_family", "H"),
    )


# ---------------------------------------------------------------------------
# Attribute payloads


def _tail(self: nla) -> bytes:
    """The payload bytes after the fixed fields of a struct-valued attribute."""
    start = self.offset + 4 + self.fixed_size
    return bytes(self.data[start : self.offset + self.length])


class _struct_nla(nla):  # type: ignore[misc]  # pyroute2 is untyped
    """An attribute whose payload is one C struct, optionally with a variable tail.

    ``tail`` names the flexible array member (``alg_key[0]``, ``bmp[0]``...);
    it decodes as the remaining payload bytes and encodes verbatim.
    """

    __slots__ = ()
    fields: ClassVar[tuple[tuple[str, Any], ...]] = ()
    tail: ClassVar[str | None] = None
    fixed_size: ClassVar[int] = 0
    defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.defaults = _bytes_defaults(cls.fields)
        cls.fixed_size = _fixed(cls.fields)

    def decode(self) -> None:
        nla.decode(self)
        for key in [k for k in self if isinstance(k, str) and k.startswith("__pad")]:
            del self[key]
        if self.tail is not None:
            self[self.tail] = _tail(self)

    def encode(self) -> None:
        if self.tail is not None:
            tail = dict.get(self, self.tail) or b""
            # pyroute2 encodes ``self.fields``: add the tail for this instance only.
            object.__setattr__(self, "fields", (*type(self).fields, (self.tail, f"{len(tail)}s")))
        nla.encode(self)


def _bytes_defaults(fields: Any) -> dict[str, Any]:
    """pyroute2 packs an unset field as 0, which struct refuses for byte strings."""
    return {name: b"" for name, fmt in fields if isinstance(fmt, str) and fmt[-1] == "s"}


def _fixed(fields: tuple[tuple[str, Any], ...]) -> int:
    size = 0
    for _, fmt in fields:
        if isinstance(fmt, type) and issubclass(fmt, CStruct):
            size += fmt.size
        else:
            size += struct.calcsize("=" + fmt.lstrip("<>!="))
    return size


class _array_nla(nla):  # type: ignore[misc]  # pyroute2 is untyped
    """An attribute carrying back-to-back C structs without NLA headers (TMPL, MIGRATE)."""

    __slots__ = ()
    fields: ClassVar[tuple[tuple[str, Any], ...]] = ()
    item: ClassVar[type[CStruct]]

    def decode(self) -> None:
        nla.decode(self)
        items = []
        offset = self.offset + 4
        end = self.offset + self.length
        while offset + self.item.size <= end:
            value, offset = self.item.decode_from(self.data, offset)
            items.append(value)
        object.__setattr__(self, "value", items)
        self["value"] = items

    def encode(self) -> None:
        body = bytearray()
        for entry in self.getvalue() or []:
            self.item.encode_into(body, len(body), entry)
        self["value"] = bytes(body)
        object.__setattr__(self, "fields", (("value", f"{len(body)}s"),))
        nla.encode(self)


RAW_SUFFIX = "__RAW"
"""Encode-only alias of every attribute name: the value is the raw payload (``bytes``)."""


def _raw_aliases(entries: Any) -> tuple[tuple[int, str, str], ...]:
    known = tuple(entries)
    # Aliases come first: for decoding, pyroute2 keeps the last class per type number.
    return tuple((index, name + RAW_SUFFIX, "cdata") for index, name, _ in known) + known


class xfrm_attrs(nlmsg):  # type: ignore[misc]  # pyroute2 is untyped
    """Shared attribute map: every ``enum xfrm_attr_type_t`` entry, in order."""

    __slots__ = ()
    prefix = "XFRMA_"
    defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # pyroute2 packs an unset field as 0, which struct refuses for byte strings.
        super().__init_subclass__(**kwargs)
        cls.defaults = _bytes_defaults(cls.fields)

    def encode(self) -> None:
        nlmsg.encode(self)
        # The kernel's nlmsg_end() counts the padding after a fixed part of
        # odd size (xfrm_usersa_flush is 1 byte): so do we.
        length = self["header"]["length"]
        if length & 3:
            aligned = (length + 3) & ~3
            if len(self.data) < self.offset + aligned:
                self.data.extend(bytes(self.offset + aligned - len(self.data)))
            self["header"]["length"] = aligned
            object.__setattr__(self, "length", aligned)
            struct.pack_into("=I", self.data, self.offset, aligned)

    nla_map = _raw_aliases(
        (index, name, kind)
        for index, (name, kind) in enumerate(
            (
                ("XFRMA_UNSPEC", "cdata"),
                ("XFRMA_ALG_AUTH", "xfrm_algo"),
                ("XFRMA_ALG_CRYPT", "xfrm_algo"),
                ("XFRMA_ALG_COMP", "xfrm_algo"),
                ("XFRMA_ENCAP", "xfrm_encap_tmpl"),
                ("XFRMA_TMPL", "xfrm_user_tmpl_array"),
                ("XFRMA_SA", "xfrm_usersa_info_nla"),
                ("XFRMA_POLICY", "xfrm_userpolicy_info_nla"),
                ("XFRMA_SEC_CTX", "xfrm_user_sec_ctx"),
                ("XFRMA_LTIME_VAL", "xfrm_lifetime_cur_nla"),
                ("XFRMA_REPLAY_VAL", "xfrm_replay_state"),
                ("XFRMA_REPLAY_THRESH", "uint32"),
                ("XFRMA_ETIMER_THRESH", "uint32"),
                ("XFRMA_SRCADDR", "xfrm_address"),
                ("XFRMA_COADDR", "xfrm_address"),
                ("XFRMA_LASTUSED", "uint64"),
                ("XFRMA_POLICY_TYPE", "xfrm_userpolicy_type"),
                ("XFRMA_MIGRATE", "xfrm_user_migrate_array"),
                ("XFRMA_ALG_AEAD", "xfrm_algo_aead"),
                ("XFRMA_KMADDRESS", "xfrm_user_kmaddress"),
                ("XFRMA_ALG_AUTH_TRUNC", "xfrm_algo_auth"),
                ("XFRMA_MARK", "xfrm_mark"),
                ("XFRMA_TFCPAD", "uint32"),
                ("XFRMA_REPLAY_ESN_VAL", "xfrm_replay_state_esn"),
                ("XFRMA_SA_EXTRA_FLAGS", "uint32"),
                ("XFRMA_PROTO", "uint8"),
                ("XFRMA_ADDRESS_FILTER", "xfrm_address_filter"),
                ("XFRMA_PAD", "cdata"),
                ("XFRMA_OFFLOAD_DEV", "xfrm_user_offload"),
                ("XFRMA_SET_MARK", "uint32"),
                ("XFRMA_SET_MARK_MASK", "uint32"),
                ("XFRMA_IF_ID", "uint32"),
                ("XFRMA_MTIMER_THRESH", "uint32"),
                ("XFRMA_SA_DIR", "uint8"),
                ("XFRMA_NAT_KEEPALIVE_INTERVAL", "uint32"),
                ("XFRMA_SA_PCPU", "uint32"),
                ("XFRMA_IPTFS_DROP_TIME", "uint32"),
                ("XFRMA_IPTFS_REORDER_WINDOW", "uint16"),
                ("XFRMA_IPTFS_DONT_FRAG", "flag"),
                ("XFRMA_IPTFS_INIT_DELAY", "uint32"),
                ("XFRMA_IPTFS_MAX_QSIZE", "uint32"),
                ("XFRMA_IPTFS_PKT_SIZE", "uint32"),
            )
        )
    ) + tuple(
        # Types newer than this table: keep the raw payload so nothing is lost.
        (index, f"XFRMA_{index}", "cdata")
        for index in range(c.XFRMA_MAX + 1, UNKNOWN_ATTR_LIMIT)
    )

    class xfrm_algo(_struct_nla):
        """XFRMA_ALG_AUTH, XFRMA_ALG_CRYPT, XFRMA_ALG_COMP.

        C structure::

            struct xfrm_algo {
                char            alg_name[64];
                unsigned int    alg_key_len;    /* in bits */
                char            alg_key[0];
            };
        """

        __slots__ = ()
        fields = (("alg_name", "64s"), ("alg_key_len", "I"))
        tail = "alg_key"

    class xfrm_algo_auth(_struct_nla):
        """XFRMA_ALG_AUTH_TRUNC.

        C structure::

            struct xfrm_algo_auth {
                char            alg_name[64];
                unsigned int    alg_key_len;    /* in bits */
                unsigned int    alg_trunc_len;  /* in bits */
                char            alg_key[0];
            };
        """

        __slots__ = ()
        fields = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_trunc_len", "I"))
        tail = "alg_key"

    class xfrm_algo_aead(_struct_nla):
        """XFRMA_ALG_AEAD.

        C structure::

            struct xfrm_algo_aead {
                char            alg_name[64];
                unsigned int    alg_key_len;    /* in bits */
                unsigned int    alg_icv_len;    /* in bits */
                char            alg_key[0];
            };
        """

        __slots__ = ()
        fields = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_icv_len", "I"))
        tail = "alg_key"

    class xfrm_encap_tmpl(_struct_nla):
        """XFRMA_ENCAP.

        C structure::

            struct xfrm_encap_tmpl {
                __u16           encap_type;
                __be16          encap_sport;
                __be16          encap_dport;
                xfrm_address_t  encap_oa;
            };
        """

        __slots__ = ()
        fields = (
            ("encap_type", "H"),
            ("encap_sport", ">H"),
            ("encap_dport", ">H"),
            ("__pad0", "2x"),
            ("encap_oa", _ADDR),
        )

    class xfrm_user_tmpl_array(_array_nla):
        """XFRMA_TMPL: one or more ``struct xfrm_user_tmpl`` (see :class:`xfrm_user_tmpl`)."""

        __slots__ = ()
        item = xfrm_user_tmpl

    class xfrm_user_migrate_array(_array_nla):
        """XFRMA_MIGRATE: one or more ``struct xfrm_user_migrate``."""

        __slots__ = ()
        item = xfrm_user_migrate

    class xfrm_usersa_info_nla(_struct_nla):
        """XFRMA_SA: ``struct xfrm_usersa_info`` (in DELSA notifications)."""

        __slots__ = ()
        fields = xfrm_usersa_info_struct.fields

    class xfrm_userpolicy_info_nla(_struct_nla):
        """XFRMA_POLICY: ``struct xfrm_userpolicy_info`` (in DELPOLICY notifications)."""

        __slots__ = ()
        fields = xfrm_userpolicy_info_struct.fields

    class xfrm_user_sec_ctx(_struct_nla):
        """XFRMA_SEC_CTX (the context string follows the struct).

        C structure::

            struct xfrm_user_sec_ctx {
                __u16   len;
                __u16   exttype;
                __u8    ctx_alg;  /* LSMs: e.g., selinux == 1 */
                __u8    ctx_doi;
                __u16   ctx_len;
            };
        """

        __slots__ = ()
        fields = (
            ("len", "H"),
            ("exttype", "H"),
            ("ctx_alg", "B"),
            ("ctx_doi", "B"),
            ("ctx_len", "H"),
        )
        tail = "ctx_str"

    class xfrm_lifetime_cur_nla(_struct_nla):
        """XFRMA_LTIME_VAL: ``struct xfrm_lifetime_cur``."""

        __slots__ = ()
        fields = xfrm_lifetime_cur.fields

    class xfrm_replay_state(_struct_nla):
        """XFRMA_REPLAY_VAL.

        C structure::

            struct xfrm_replay_state {
                __u32   oseq;
                __u32   seq;
                __u32   bitmap;
            };
        """

        __slots__ = ()
        fields = (("oseq", "I"), ("seq", "I"), ("bitmap", "I"))

    class xfrm_replay_state_esn(_struct_nla):
        """XFRMA_REPLAY_ESN_VAL (``bmp`` holds ``bmp_len`` native __u32 words).

        C structure::

            struct xfrm_replay_state_esn {
                unsigned int    bmp_len;
                __u32           oseq;
                __u32           seq;
                __u32           oseq_hi;
                __u32           seq_hi;
                __u32           replay_window;
                __u32           bmp[0];
            };
        """

        __slots__ = ()
        fields = (
            ("bmp_len", "I"),
            ("oseq", "I"),
            ("seq", "I"),
            ("oseq_hi", "I"),
            ("seq_hi", "I"),
            ("replay_window", "I"),
        )
        tail = "bmp"

    class xfrm_address(_struct_nla):
        """XFRMA_SRCADDR, XFRMA_COADDR: ``xfrm_address_t`` (16 bytes)."""

        __slots__ = ()
        fields = (("addr", _ADDR),)

    class xfrm_userpolicy_type(_struct_nla):
        """XFRMA_POLICY_TYPE.

        C structure::

            struct xfrm_userpolicy_type {
                __u8    type;
                __u16   reserved1;
                __u8    reserved2;
            };
        """

        __slots__ = ()
        fields = (
            ("type", "B"),
            ("__pad0", "x"),
            ("reserved1", "H"),
            ("reserved2", "B"),
            ("__pad1", "x"),
        )

    class xfrm_user_kmaddress(_struct_nla):
        """XFRMA_KMADDRESS.

        C structure::

            struct xfrm_user_kmaddress {
                xfrm_address_t  local;
                xfrm_address_t  remote;
                __u32           reserved;
                __u16           family;
            };
        """

        __slots__ = ()
        fields = (
            ("local", _ADDR),
            ("remote", _ADDR),
            ("reserved", "I"),
            ("family", "H"),
            ("__pad0", "2x"),
        )

    class xfrm_mark(_struct_nla):
        """XFRMA_MARK.

        C structure::

            struct xfrm_mark {
                __u32   v; /* value */
                __u32   m; /* mask */
            };
        """

        __slots__ = ()
        fields = (("v", "I"), ("m", "I"))

    class xfrm_address_filter(_struct_nla):
        """XFRMA_ADDRESS_FILTER (dump filter).

        C structure::

            struct xfrm_address_filter {
                xfrm_address_t  saddr;
                xfrm_address_t  daddr;
                __u16           family;
                __u8            splen;
                __u8            dplen;
            };
        """

        __slots__ = ()
        fields = (
            ("saddr", _ADDR),
            ("daddr", _ADDR),
            ("family", "H"),
            ("splen", "B"),
            ("dplen", "B"),
        )

    class xfrm_user_offload(_struct_nla):
        """XFRMA_OFFLOAD_DEV.

        C structure::

            struct xfrm_user_offload {
                int     ifindex;
                __u8    flags;
            };
        """

        __slots__ = ()
        fields = (("ifindex", "i"), ("flags", "B"), ("__pad0", "3x"))


# ---------------------------------------------------------------------------
# Messages (fixed part + attributes)


class xfrm_usersa_info(xfrm_attrs):
    """An SA: NEWSA, UPDSA requests; NEWSA/UPDSA dump entries and events.

    C structure::

        struct xfrm_usersa_info {
            struct xfrm_selector        sel;
            struct xfrm_id              id;
            xfrm_address_t              saddr;
            struct xfrm_lifetime_cfg    lft;
            struct xfrm_lifetime_cur    curlft;
            struct xfrm_stats           stats;
            __u32                       seq;
            __u32                       reqid;
            __u16                       family;
            __u8                        mode;           /* XFRM_MODE_xxx */
            __u8                        replay_window;
            __u8                        flags;
        };
    """

    __slots__ = ()
    fields = xfrm_usersa_info_struct.fields


class xfrm_usersa_id(xfrm_attrs):
    """Names one SA: GETSA, DELSA requests; DELSA notifications (+ XFRMA_SA).

    C structure::

        struct xfrm_usersa_id {
            xfrm_address_t  daddr;
            __be32          spi;
            __u16           family;
            __u8            proto;
        };
    """

    __slots__ = ()
    fields = xfrm_usersa_id_struct.fields


class xfrm_aevent_id(xfrm_attrs):
    """GETAE / NEWAE: replay and lifetime state of one SA.

    C structure::

        struct xfrm_aevent_id {
            struct xfrm_usersa_id   sa_id;
            xfrm_address_t          saddr;
            __u32                   flags;
            __u32                   reqid;
        };
    """

    __slots__ = ()
    fields = (("sa_id", xfrm_usersa_id_struct), ("saddr", _ADDR), ("flags", "I"), ("reqid", "I"))


class xfrm_userspi_info(xfrm_attrs):
    """ALLOCSPI request: an SA template and the SPI range.

    C structure::

        struct xfrm_userspi_info {
            struct xfrm_usersa_info info;
            __u32                   min;
            __u32                   max;
        };
    """

    __slots__ = ()
    fields = (("info", xfrm_usersa_info_struct), ("min", "I"), ("max", "I"))


class xfrm_userpolicy_info(xfrm_attrs):
    """A policy: NEWPOLICY, UPDPOLICY requests; dump entries and events.

    C structure::

        struct xfrm_userpolicy_info {
            struct xfrm_selector        sel;
            struct xfrm_lifetime_cfg    lft;
            struct xfrm_lifetime_cur    curlft;
            __u32                       priority;
            __u32                       index;
            __u8                        dir;
            __u8                        action;
            __u8                        flags;
            __u8                        share;
        };
    """

    __slots__ = ()
    fields = xfrm_userpolicy_info_struct.fields


class xfrm_userpolicy_id(xfrm_attrs):
    """Names one policy: GETPOLICY, DELPOLICY; DELPOLICY notifications (+ XFRMA_POLICY).

    C structure::

        struct xfrm_userpolicy_id {
            struct xfrm_selector    sel;
            __u32                   index;
            __u8                    dir;
        };
    """

    __slots__ = ()
    fields = (("sel", xfrm_selector), ("index", "I"), ("dir", "B"), ("__pad0", "3x"))


class xfrm_user_acquire(xfrm_attrs):
    """ACQUIRE notification: the kernel wants an SA for this traffic.

    C structure::

        struct xfrm_user_acquire {
            struct xfrm_id              id;
            xfrm_address_t              saddr;
            struct xfrm_selector        sel;
            struct xfrm_userpolicy_info policy;
            __u32                       aalgos;
            __u32                       ealgos;
            __u32                       calgos;
            __u32                       seq;
        };
    """

    __slots__ = ()
    fields = (
        ("id", xfrm_id),
        ("saddr", _ADDR),
        ("sel", xfrm_selector),
        ("policy", xfrm_userpolicy_info_struct),
        ("aalgos", "I"),
        ("ealgos", "I"),
        ("calgos", "I"),
        ("seq", "I"),
    )


class xfrm_user_expire(xfrm_attrs):
    """EXPIRE notification (soft or hard) for an SA.

    C structure::

        struct xfrm_user_expire {
            struct xfrm_usersa_info state;
            __u8                    hard;
        };
    """

    __slots__ = ()
    fields = (("state", xfrm_usersa_info_struct), ("hard", "B"), ("__pad0", "7x"))


class xfrm_user_polexpire(xfrm_attrs):
    """POLEXPIRE notification for a policy.

    C structure::

        struct xfrm_user_polexpire {
            struct xfrm_userpolicy_info pol;
            __u8                        hard;
        };
    """

    __slots__ = ()
    fields = (("pol", xfrm_userpolicy_info_struct), ("hard", "B"), ("__pad0", "7x"))


class xfrm_usersa_flush(xfrm_attrs):
    """FLUSHSA request and notification.

    C structure::

        struct xfrm_usersa_flush {
            __u8    proto;
        };
    """

    __slots__ = ()
    fields = (("proto", "B"),)


class xfrm_flushpolicy(xfrm_attrs):
    """FLUSHPOLICY request/notification: no fixed part, optional XFRMA_POLICY_TYPE."""

    __slots__ = ()
    fields = ()


class xfrm_user_report(xfrm_attrs):
    """REPORT notification.

    C structure::

        struct xfrm_user_report {
            __u8                    proto;
            struct xfrm_selector    sel;
        };
    """

    __slots__ = ()
    fields = (("proto", "B"), ("__pad0", "3x"), ("sel", xfrm_selector))


class xfrm_user_mapping(xfrm_attrs):
    """MAPPING notification (NAT-T port change of an inbound SA).

    C structure::

        struct xfrm_user_mapping {
            struct xfrm_usersa_id   id;
            __u32                   reqid;
            xfrm_address_t          old_saddr;
            xfrm_address_t          new_saddr;
            __be16                  old_sport;
            __be16                  new_sport;
        };
    """

    __slots__ = ()
    fields = (
        ("id", xfrm_usersa_id_struct),
        ("reqid", "I"),
        ("old_saddr", _ADDR),
        ("new_saddr", _ADDR),
        ("old_sport", ">H"),
        ("new_sport", ">H"),
    )


class xfrm_userpolicy_default(xfrm_attrs):
    """SETDEFAULT / GETDEFAULT: the default action per direction.

    C structure::

        struct xfrm_userpolicy_default {
            __u8    in;
            __u8    fwd;
            __u8    out;
        };
    """

    __slots__ = ()
    fields = (("in", "B"), ("fwd", "B"), ("out", "B"))


class xfrm_migrate_msg(xfrm_attrs):
    """MIGRATE request/notification: ``xfrm_userpolicy_id`` + XFRMA_MIGRATE (+ KMADDRESS)."""

    __slots__ = ()
    fields = xfrm_userpolicy_id.fields


class nlmsgerr_msg(nlmsg):  # type: ignore[misc]  # pyroute2 is untyped
    """NLMSG_ERROR: errno (0 = ack) and the header of the request it answers.

    C structure::

        struct nlmsgerr {
            int             error;
            struct nlmsghdr msg;
        };
    """

    __slots__ = ()
    fields = (
        ("error", "i"),
        ("length", "I"),
        ("type", "H"),
        ("flags", "H"),
        ("sequence_number", "I"),
        ("pid", "I"),
    )


MESSAGE_CLASSES: dict[int, type[xfrm_attrs]] = {
    c.XFRM_MSG_NEWSA: xfrm_usersa_info,
    c.XFRM_MSG_UPDSA: xfrm_usersa_info,
    c.XFRM_MSG_DELSA: xfrm_usersa_id,
    c.XFRM_MSG_GETSA: xfrm_usersa_id,
    c.XFRM_MSG_NEWPOLICY: xfrm_userpolicy_info,
    c.XFRM_MSG_UPDPOLICY: xfrm_userpolicy_info,
    c.XFRM_MSG_DELPOLICY: xfrm_userpolicy_id,
    c.XFRM_MSG_GETPOLICY: xfrm_userpolicy_id,
    c.XFRM_MSG_ALLOCSPI: xfrm_userspi_info,
    c.XFRM_MSG_ACQUIRE: xfrm_user_acquire,
    c.XFRM_MSG_EXPIRE: xfrm_user_expire,
    c.XFRM_MSG_POLEXPIRE: xfrm_user_polexpire,
    c.XFRM_MSG_FLUSHSA: xfrm_usersa_flush,
    c.XFRM_MSG_FLUSHPOLICY: xfrm_flushpolicy,
    c.XFRM_MSG_NEWAE: xfrm_aevent_id,
    c.XFRM_MSG_GETAE: xfrm_aevent_id,
    c.XFRM_MSG_REPORT: xfrm_user_report,
    c.XFRM_MSG_MIGRATE: xfrm_migrate_msg,
    c.XFRM_MSG_MAPPING: xfrm_user_mapping,
    c.XFRM_MSG_SETDEFAULT: xfrm_userpolicy_default,
    c.XFRM_MSG_GETDEFAULT: xfrm_userpolicy_default,
}
"""Which fixed part each message type carries (kernel ``xfrm_msg_min``)."""

# DELSA/DELPOLICY notifications carry the *_id struct; NEWSA replies to ALLOCSPI the info.

"""The canonical JSON form of model objects, derived from their type hints.

One generic codec rather than hand-written ``to_dict`` methods: every field
of every model class is serialised, so adding a field cannot silently drop it
from snapshots. Encoding: ints as JSON numbers, ``bytes`` and keys as
lowercase hex, addresses as their text form (IPv4 dotted, IPv6 colon; the
text form tells the version), tuples as lists, absent optionals as null.
Decoding is strict: unknown keys, wrong types and out-of-range values are
errors that name the path of the bad value.

Snapshots hold tens of thousands of entries, so the per-class plans are
built once, paths are only formatted when something is wrong, and address
texts are cached (a node's entries repeat few addresses).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import functools
import gc
import ipaddress
import json
import logging
import socket
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

from appliance.model._common import Address, KeyMaterial, ModelError, UnsupportedVersionError

log = logging.getLogger("appliance.model")

MODEL_VERSION = 1
"""Version of the serialised form of every model document (see docs/model.md)."""

Encoder = Callable[[Any, bool], Any]
Decoder = Callable[[Any], Any]

_ADDRESS_TYPES = frozenset({ipaddress.IPv4Address, ipaddress.IPv6Address})
_MISSING = object()


class _DecodeError(ModelError):
    """A bad value, with the path to it built up as the error travels outwards."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.message = message
        self.path = path

    def inside(self, segment: str) -> _DecodeError:
        """The same error one level further out (``segment`` is ``.name`` or ``[i]``)."""
        return _DecodeError(self.message, segment + self.path)


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    fields: tuple[tuple[str, Encoder, Decoder, bool], ...]
    known: frozenset[str]


_plans: dict[type, _Plan] = {}


def _enc_int(value: Any, redact: bool) -> Any:
    return value


def _dec_int(data: Any) -> int:
    if type(data) is not int:
        raise _DecodeError(f"expected an integer, got {data!r}")
    return data


def _dec_str(data: Any) -> str:
    if type(data) is not str:
        raise _DecodeError(f"expected a string, got {data!r}")
    return data


def _enc_bytes(value: Any, redact: bool) -> Any:
    return bytes(value).hex()


def _dec_bytes(data: Any) -> bytes:
    if type(data) is not str:
        raise _DecodeError(f"expected a hex string, got {data!r}")
    try:
        return bytes.fromhex(data)
    except ValueError:
        raise _DecodeError("not a hex string") from None


def _enc_key(value: Any, redact: bool) -> Any:
    return None if redact else value.data.hex()


def _dec_key(data: Any) -> KeyMaterial:
    return KeyMaterial(_dec_bytes(data))


@functools.lru_cache(maxsize=1 << 16)
def _address_text(address: Address) -> str:
    return str(address)


@functools.lru_cache(maxsize=1 << 16)
def _parse_address(text: str) -> Address:
    # The text form decides the version, as in ipaddress.ip_address, without
    # its try-IPv4-first exception. inet_pton (C) parses first: ipaddress's
    # parser is Python and snapshots hold tens of thousands of addresses.
    # What inet_pton refuses (a scope "%eth0", bad text) goes to ipaddress,
    # which accepts it or raises the ValueError.
    if ":" in text:
        try:
            return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text))
        except (OSError, ValueError):
            return ipaddress.IPv6Address(text)
    try:
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError):
        return ipaddress.IPv4Address(text)


def _enc_address(value: Any, redact: bool) -> Any:
    return _address_text(value)


def _dec_address(data: Any) -> Any:
    if type(data) is not str:
        raise _DecodeError(f"expected an IP address string, got {data!r}")
    try:
        return _parse_address(data)
    except ValueError:
        raise _DecodeError(f"{data!r} is not an IP address") from None


def _enc_datetime(value: Any, redact: bool) -> Any:
    return value.isoformat()


def _dec_datetime(data: Any) -> datetime.datetime:
    if type(data) is not str:
        raise _DecodeError(f"expected an ISO 8601 time, got {data!r}")
    try:
        when = datetime.datetime.fromisoformat(data)
    except ValueError:
        raise _DecodeError(f"{data!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise _DecodeError(f"{data!r} has no time zone")
    return when


def _codec_for(hint: Any) -> tuple[Encoder, Decoder]:
    """Encoder and decoder for one type hint."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        rest = tuple(a for a in args if a is not type(None))
        optional = len(rest) != len(args)
        enc: Encoder
        dec: Decoder
        if frozenset(rest) == _ADDRESS_TYPES:
            enc, dec = _enc_address, _dec_address
        elif len(rest) == 1:
            enc, dec = _codec_for(rest[0])
        else:
            raise TypeError(f"unsupported union {hint!r}")
        if not optional:
            return enc, dec

        def enc_opt(value: Any, redact: bool) -> Any:
            return None if value is None else enc(value, redact)

        def dec_opt(data: Any) -> Any:
            return None if data is None else dec(data)

        return enc_opt, dec_opt
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item_enc, item_dec = _codec_for(args[0])

            def enc_seq(value: Any, redact: bool) -> Any:
                return [item_enc(v, redact) for v in value]

            def dec_seq(data: Any) -> Any:
                if type(data) is not list:
                    raise _DecodeError(f"expected a list, got {type(data).__name__}")
                out = []
                for i, v in enumerate(data):
                    try:
                        out.append(item_dec(v))
                    except _DecodeError as exc:
                        raise exc.inside(f"[{i}]") from None
                return tuple(out)

            return enc_seq, dec_seq
        parts = [_codec_for(a) for a in args]

        def enc_fixed(value: Any, redact: bool) -> Any:
            return [e(v, redact) for (e, _), v in zip(parts, value, strict=True)]

        def dec_fixed(data: Any) -> Any:
            if type(data) is not list or len(data) != len(parts):
                raise _DecodeError(f"expected a list of {len(parts)} items")
            out = []
            for i, ((_, d), v) in enumerate(zip(parts, data, strict=True)):
                try:
                    out.append(d(v))
                except _DecodeError as exc:
                    raise exc.inside(f"[{i}]") from None
            return tuple(out)

        return enc_fixed, dec_fixed
    simple: dict[Any, tuple[Encoder, Decoder]] = {
        int: (_enc_int, _dec_int),
        str: (_enc_int, _dec_str),
        bytes: (_enc_bytes, _dec_bytes),
        KeyMaterial: (_enc_key, _dec_key),
        datetime.datetime: (_enc_datetime, _dec_datetime),
    }
    if hint in simple:
        return simple[hint]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        cls = hint

        def enc_obj(value: Any, redact: bool) -> Any:
            return encode_object(value, redact_keys=redact)

        def dec_obj(data: Any) -> Any:
            return _decode(cls, data)

        return enc_obj, dec_obj
    raise TypeError(f"no codec for {hint!r}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # Evaluating the (string) annotations is slow; the plan and the fast decoder both need them.
    return typing.get_type_hints(cls)


def _plan(cls: type) -> _Plan:
    plan = _plans.get(cls)
    if plan is None:
        hints = _hints(cls)
        items = []
        for f in dataclasses.fields(cls):
            enc, dec = _codec_for(hints[f.name])
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            items.append((f.name, enc, dec, has_default))
        plan = _Plan(tuple(items), frozenset(name for name, _, _, _ in items))
        _plans[cls] = plan
    return plan


def encode_object(obj: Any, *, redact_keys: bool) -> dict[str, Any]:
    """A model object as a JSON-ready dict (every field, sorted on output)."""
    return {
        name: enc(getattr(obj, name), redact_keys) for name, enc, _, _ in _plan(type(obj)).fields
    }


def _decode(cls: type, data: Any) -> Any:
    if type(data) is not dict:
        raise _DecodeError(f"expected an object, got {type(data).__name__}")
    plan = _plan(cls)
    if not plan.known.issuperset(data):
        unknown = sorted(map(str, set(data) - plan.known))
        raise _DecodeError(f"unknown field(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, _, dec, has_default in plan.fields:
        value = data.get(name, _MISSING)
        if value is _MISSING:
            if not has_default:
                raise _DecodeError(f"missing field {name}")
            continue
        try:
            kwargs[name] = dec(value)
        except _DecodeError as exc:
            raise exc.inside(f".{name}") from None
    try:
        return cls(**kwargs)
    except _DecodeError:
        raise
    except ModelError as exc:
        raise _DecodeError(str(exc)) from None


def decode_object(cls: type, data: Any, path: str) -> Any:
    """Build ``cls`` from a dict made by ``encode_object``; fields with defaults may be absent.

    ``path`` names ``data`` in error messages (``snapshot``, ``sad``, ...).
    """
    try:
        return _fast_decoder(cls)(data)
    except Exception as fast_error:
        # Expected for invalid input: the checked decoder below says where it is wrong.
        fast_failure: Exception = fast_error
    try:
        decoded = _decode(cls, data)
    except _DecodeError as exc:
        raise ModelError(f"{path}{exc.path}: {exc.message}") from None
    _fast_path_fell_back(cls, fast_failure)
    return decoded


# --- the fast path ------------------------------------------------------------------
#
# Restoring 10,000 SA pairs decodes some 100,000 objects, and the checked
# decoder above spends most of its time building error paths that are never
# used. So each class also gets a decoder generated from its fields: no
# paths, integers checked by the class itself (``_Checked``), and objects
# made only of plain values (selectors, lifetimes, templates, ...) shared
# between entries that have equal ones. It accepts exactly what the checked
# decoder accepts; on anything unexpected it raises, and ``decode_object``
# runs the checked decoder, which gives the error its path. Should the
# checked decoder accept what the fast one refused, the fast one has a bug:
# ``fast_path_fallbacks`` counts it and the first per class is logged.

_fast: dict[type, Callable[[Any], Any]] = {}

fast_path_fallbacks: collections.Counter[str] = collections.Counter()
"""Valid documents the fast decoder refused, per class name: each one is a bug in it.

The checked decoder still decodes them, so nothing is lost but speed; the
first per class is logged at warning, and the unit tests fail on any.
"""


def _fast_path_fell_back(cls: type, error: Exception) -> None:
    """The fast decoder refused what the checked one accepted: count it, say it once."""
    name = cls.__qualname__
    if not fast_path_fallbacks[name]:
        log.warning(
            "model codec: the fast decoder of %s refused a valid document (%s: %s); "
            "decoding on the slow path",
            name,
            type(error).__name__,
            error,
        )
    fast_path_fallbacks[name] += 1


_SHARE_LIMIT = 1 << 17
_PLAIN_HINTS: frozenset[Any] = frozenset(
    {int, str, int | None, str | None, Address, Address | None}
)


def _checked_str(value: Any) -> str:
    if type(value) is not str:
        raise TypeError("not a string")
    return value


def _checked_int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError("not an integer")
    return value


def _list_of(decode: Callable[[Any], Any], value: Any) -> tuple[Any, ...]:
    if type(value) is not list:
        raise TypeError("not a list")
    return tuple(map(decode, value))


def _parse_optional_address(value: Any) -> Any:
    return None if value is None else _parse_address(value)


def _fast_expr(hint: Any, bits: bool, ns: dict[str, Any], slot: str) -> str:
    """Python expression decoding ``v`` for ``hint``; helpers go into ``ns``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    rest = tuple(a for a in args if a is not type(None))
    if hint is int or (origin in (typing.Union, types.UnionType) and rest == (int,)):
        if bits:
            return "v"  # type and range: the class's __post_init__ checks them
        ns[slot] = _checked_int
        return f"(None if v is None else {slot}(v))" if rest else f"{slot}(v)"
    if hint is str:
        ns[slot] = _checked_str
        return f"{slot}(v)"
    if hint == Address:
        ns[slot] = _parse_address
        return f"{slot}(v)"
    if hint == (Address | None):
        ns[slot] = _parse_optional_address
        return f"{slot}(v)"
    if hint is KeyMaterial:
        ns[slot] = KeyMaterial
        return f"{slot}(bytes.fromhex(v))"
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        ns[slot] = _fast_decoder(hint)
        return f"{slot}(v)"
    if origin in (typing.Union, types.UnionType) and len(rest) == 1:
        inner = rest[0]
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            ns[slot] = _fast_decoder(inner)
            return f"(None if v is None else {slot}(v))"
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = args[0]
        if isinstance(item, type) and dataclasses.is_dataclass(item):
            ns[slot] = functools.partial(_list_of, _fast_decoder(item))
            return f"{slot}(v)"
    # Anything else (bytes, datetimes, extra_attrs, ESN bitmaps): the checked codec,
    # skipped for the empty list that nearly every entry has.
    dec = _codec_for(hint)[1]
    ns[slot] = dec
    if origin is tuple:
        return f"(() if type(v) is list and not v else {slot}(v))"
    return f"{slot}(v)"


def _fast_decoder(cls: type) -> Callable[[Any], Any]:
    decoder = _fast.get(cls)
    if decoder is not None:
        return decoder
    hints = _hints(cls)
    plan = _plan(cls)
    ns: dict[str, Any] = {"cls": cls, "known": plan.known, "MISSING": _MISSING}
    all_fields = dataclasses.fields(cls)
    # Canonical documents (to_dict, snapshot files) hold every field: then
    # plain indexing, else a lookup with the default for each.
    full = [
        "def decode(data):",
        "    if type(data) is not dict or not known.issuperset(data):",
        "        raise TypeError('not a known object')",
        f"    if len(data) == {len(all_fields)}:",
    ]
    partial = ["    get = data.get"]
    plain = True
    for i, f in enumerate(all_fields):
        hint = hints[f.name]
        plain = plain and hint in _PLAIN_HINTS
        expr = _fast_expr(hint, "bits" in f.metadata, ns, f"h{i}")
        full.append(f"        v = data[{f.name!r}]")
        full.append(f"        a{i} = {expr}")
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            # Model objects are immutable, so one default instance serves all.
            factory: Callable[[], Any] = f.default_factory  # type: ignore[assignment]
            default = f.default if f.default is not dataclasses.MISSING else factory()
            ns[f"d{i}"] = default
            partial.append(f"    v = get({f.name!r}, MISSING)")
            partial.append(f"    a{i} = d{i} if v is MISSING else {expr}")
        else:
            partial.append(f"    v = data[{f.name!r}]")
            partial.append(f"    a{i} = {expr}")
    # Positional, in field order: cheaper than keywords for 40-field classes.
    if all(f.init and not f.kw_only for f in all_fields):
        call = f"cls({', '.join(f'a{i}' for i in range(len(all_fields)))})"
    else:
        call = f"cls({', '.join(f'{f.name}=a{i}' for i, f in enumerate(all_fields))})"
    full.append(f"        return {call}")
    partial.append(f"    return {call}")
    exec("\n".join(full + partial), ns)
    decoder = ns["decode"]
    if plain:
        decoder = _shared(decoder)
    _fast[cls] = decoder
    return decoder


def _shared(decode: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Return one object for equal inputs (only for classes made of plain values)."""
    seen: dict[tuple[tuple[str, Any], ...], Any] = {}

    def decode_shared(data: Any) -> Any:
        if type(data) is not dict:
            raise TypeError("not an object")
        key = tuple(data.items())  # unhashable values raise: the checked path explains
        found = seen.get(key)
        if found is None:
            found = decode(data)
            if len(seen) >= _SHARE_LIMIT:
                seen.clear()
            seen[key] = found
        return found

    return decode_shared


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building or reading a large document.

    Snapshots create a few hundred thousand acyclic objects; the collector's
    passes over them would cost more than the work itself.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def canonical_json(document: dict[str, Any]) -> bytes:
    """Canonical bytes of a JSON document: sorted keys, no spaces, ASCII only."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def to_canonical(format_name: str, body: dict[str, Any]) -> bytes:
    """A versioned document: ``{"format": ..., "version": ..., **body}`` as canonical JSON."""
    return canonical_json({"format": format_name, "version": MODEL_VERSION, **body})


def check_header(format_name: str, document: Any, what: str) -> dict[str, Any]:
    """Check the format name and version of a parsed document; return it."""
    if not isinstance(document, dict):
        raise ModelError(f"{what}: not a JSON object")
    if document.get("format") != format_name:
        raise ModelError(f"{what}: format is {document.get('format')!r}, expected {format_name!r}")
    version = document.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelError(f"{what}: invalid format version {version!r}")
    if version > MODEL_VERSION:
        raise UnsupportedVersionError(
            f"{what}: format version {version} is newer than this ipsec-ha supports "
            f"(up to {MODEL_VERSION}); upgrade ipsec-ha to read it"
        )
    return document


def from_canonical(format_name: str, data: bytes, what: str | None = None) -> dict[str, Any]:
    """Parse a versioned document made by ``to_canonical`` and check its header."""
    what = what or format_name
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{what}: not valid JSON ({exc})") from None
    return check_header(format_name, document, what)

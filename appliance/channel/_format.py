"""Channel datagram layouts and key schedule (docs/protocol.md section 6).

Five datagram types share the first four bytes (type, version, reserved):

* INIT   (1): initiator association ID, nonce Ni, node ID, cookie, padding, HMAC.
* RESP   (2): both association IDs, nonce Nr, node ID, HMAC (also over INIT).
* DATA   (3): receiver association ID, 64-bit sequence number, AEAD output.
* COOKIE (4): initiator association ID, cookie, HMAC (also over Ni).
* CLOSE  (5): as DATA, with an empty plaintext: the client is done with the association.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.channel._errors import RemoteChannelError
from appliance.wire.constants import CHANNEL_OVERHEAD

VERSION = 2
TYPE_INIT = 1
TYPE_RESP = 2
TYPE_DATA = 3
TYPE_COOKIE = 4
TYPE_CLOSE = 5

ASSOCIATION_ID_LENGTH = 8
NONCE_LENGTH = 32
MAC_LENGTH = 32
TAG_LENGTH = 16
KEY_LENGTH = 32
SALT_LENGTH = 4
MIN_PSK_LENGTH = 32
MAX_NODE_ID_LENGTH = 255
COOKIE_LENGTH = 16

MAX_RESP_LENGTH = 4 + 2 * ASSOCIATION_ID_LENGTH + NONCE_LENGTH + 1 + MAX_NODE_ID_LENGTH + MAC_LENGTH
MIN_COOKIE_INIT_LENGTH = MAX_RESP_LENGTH  # 340
"""An INIT that carries a cookie is padded to this, so no RESP is larger than its INIT."""
COOKIE_DATAGRAM_LENGTH = 4 + ASSOCIATION_ID_LENGTH + COOKIE_LENGTH + MAC_LENGTH  # 60
MIN_INIT_LENGTH = 4 + ASSOCIATION_ID_LENGTH + NONCE_LENGTH + 1 + 1 + 1 + 2 + MAC_LENGTH  # 81
assert COOKIE_DATAGRAM_LENGTH <= MIN_INIT_LENGTH

DATA_HEADER = struct.Struct("!BBH8sQ")
DATA_HEADER_LENGTH = DATA_HEADER.size  # 20
assert DATA_HEADER_LENGTH + TAG_LENGTH == CHANNEL_OVERHEAD

_HANDSHAKE_INFO = b"ipsec-ha channel v1 handshake"
_SESSION_INFO = b"ipsec-ha channel v1 session"


def handshake_key(psk: bytes) -> bytes:
    """The HMAC key for handshake messages, separate from every session key."""
    return HKDF(hashes.SHA256(), KEY_LENGTH, salt=None, info=_HANDSHAKE_INFO).derive(psk)


def mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Keys and nonce salts for both directions of one association."""

    i2r_key: bytes
    i2r_salt: bytes
    r2i_key: bytes
    r2i_salt: bytes


def session_keys(
    psk: bytes,
    ni: bytes,
    nr: bytes,
    initiator_aid: bytes,
    responder_aid: bytes,
    initiator_node: bytes,
    responder_node: bytes,
) -> SessionKeys:
    """HKDF-SHA256(PSK, salt = Ni | Nr, info = label | AIDi | AIDr | IDi | IDr)."""
    info = (
        _SESSION_INFO
        + initiator_aid
        + responder_aid
        + bytes([len(initiator_node)])
        + initiator_node
        + bytes([len(responder_node)])
        + responder_node
    )
    length = 2 * (KEY_LENGTH + SALT_LENGTH)
    okm = HKDF(hashes.SHA256(), length, salt=ni + nr, info=info).derive(psk)
    k = KEY_LENGTH
    s = SALT_LENGTH
    return SessionKeys(okm[:k], okm[k : k + s], okm[k + s : 2 * k + s], okm[2 * k + s :])


@dataclass(frozen=True, slots=True)
class Init:
    initiator_aid: bytes
    ni: bytes
    node_id: bytes
    cookie: bytes
    """Empty in a first INIT; the server's cookie in the repeated one."""
    identity: bytes
    """AIDi | Ni | len(IDi) | IDi: what the cookie is computed over."""
    signed: bytes
    """Every byte before the MAC."""
    mac: bytes


@dataclass(frozen=True, slots=True)
class Cookie:
    initiator_aid: bytes
    cookie: bytes
    signed: bytes
    mac: bytes


@dataclass(frozen=True, slots=True)
class Resp:
    initiator_aid: bytes
    responder_aid: bytes
    nr: bytes
    node_id: bytes
    signed: bytes
    mac: bytes


def _prefix(datagram_type: int) -> bytes:
    return bytes([datagram_type, VERSION, 0, 0])


def build_init(
    key: bytes, initiator_aid: bytes, ni: bytes, node_id: bytes, cookie: bytes = b""
) -> bytes:
    """INIT; with a cookie it is zero-padded to ``MIN_COOKIE_INIT_LENGTH`` (the largest RESP)."""
    body = initiator_aid + ni + bytes([len(node_id)]) + node_id + bytes([len(cookie)]) + cookie
    padding = 0
    if cookie:
        padding = max(0, MIN_COOKIE_INIT_LENGTH - (4 + len(body) + 2 + MAC_LENGTH))
    signed = _prefix(TYPE_INIT) + body + padding.to_bytes(2, "big") + bytes(padding)
    return signed + mac(key, signed)


def cookie_value(secret: bytes, addr: bytes, identity: bytes) -> bytes:
    """The server's cookie: a truncated MAC under its own secret over the source and INIT."""
    return mac(secret, len(addr).to_bytes(2, "big"), addr, identity)[:COOKIE_LENGTH]


def build_cookie(key: bytes, initiator_aid: bytes, ni: bytes, cookie: bytes) -> bytes:
    signed = _prefix(TYPE_COOKIE) + initiator_aid + cookie
    return signed + mac(key, ni, signed)


def build_resp(
    key: bytes,
    init_datagram: bytes,
    initiator_aid: bytes,
    responder_aid: bytes,
    nr: bytes,
    node_id: bytes,
) -> bytes:
    signed = (
        _prefix(TYPE_RESP) + initiator_aid + responder_aid + nr + bytes([len(node_id)]) + node_id
    )
    return signed + mac(key, init_datagram, signed)


def _node_id_and_mac(data: bytes, offset: int) -> tuple[bytes, bytes, bytes]:
    if len(data) < offset + 1:
        raise RemoteChannelError("truncated before the node ID")
    length = data[offset]
    end = offset + 1 + length
    if length == 0 or len(data) != end + MAC_LENGTH:
        raise RemoteChannelError("node ID length does not match the datagram length")
    return data[offset + 1 : end], data[:end], data[end:]


def parse_init(data: bytes) -> Init:
    aid_end = 4 + ASSOCIATION_ID_LENGTH
    nonce_end = aid_end + NONCE_LENGTH
    if len(data) < MIN_INIT_LENGTH:
        raise RemoteChannelError("INIT too short")
    id_end = nonce_end + 1 + data[nonce_end]
    if data[nonce_end] == 0 or len(data) < id_end + 1 + 2 + MAC_LENGTH:
        raise RemoteChannelError("node ID length does not match the datagram length")
    cookie_end = id_end + 1 + data[id_end]
    if data[id_end] not in (0, COOKIE_LENGTH) or len(data) < cookie_end + 2 + MAC_LENGTH:
        raise RemoteChannelError("bad cookie length")
    pad_end = cookie_end + 2 + int.from_bytes(data[cookie_end : cookie_end + 2], "big")
    if len(data) != pad_end + MAC_LENGTH or any(data[cookie_end + 2 : pad_end]):
        raise RemoteChannelError("padding does not match the datagram length or is not zero")
    cookie = data[id_end + 1 : cookie_end]
    if cookie and len(data) < MIN_COOKIE_INIT_LENGTH:
        raise RemoteChannelError("an INIT with a cookie must be padded to the largest RESP")
    return Init(
        initiator_aid=data[4:aid_end],
        ni=data[aid_end:nonce_end],
        node_id=data[nonce_end + 1 : id_end],
        cookie=cookie,
        identity=data[4:id_end],
        signed=data[:pad_end],
        mac=data[pad_end:],
    )


def parse_cookie(data: bytes) -> Cookie:
    if len(data) != COOKIE_DATAGRAM_LENGTH:
        raise RemoteChannelError("COOKIE has the wrong length")
    aid_end = 4 + ASSOCIATION_ID_LENGTH
    cookie_end = aid_end + COOKIE_LENGTH
    return Cookie(data[4:aid_end], data[aid_end:cookie_end], data[:cookie_end], data[cookie_end:])


def parse_resp(data: bytes) -> Resp:
    i_end = 4 + ASSOCIATION_ID_LENGTH
    r_end = i_end + ASSOCIATION_ID_LENGTH
    nonce_end = r_end + NONCE_LENGTH
    node_id, signed, tag = _node_id_and_mac(data, nonce_end)
    return Resp(data[4:i_end], data[i_end:r_end], data[r_end:nonce_end], node_id, signed, tag)


def aead_nonce(salt: bytes, seq: int) -> bytes:
    return salt + seq.to_bytes(8, "big")

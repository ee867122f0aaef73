"""Channel datagram layouts and key schedule (docs/protocol.md section 6).

Three datagram types share the first four bytes (type, version, reserved):

* INIT  (1): initiator association ID, nonce Ni, node ID, HMAC.
* RESP  (2): both association IDs, nonce Nr, node ID, HMAC (also over INIT).
* DATA  (3): receiver association ID, 64-bit sequence number, AEAD output.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.wire.constants import CHANNEL_OVERHEAD

VERSION = 1
TYPE_INIT = 1
TYPE_RESP = 2
TYPE_DATA = 3

ASSOCIATION_ID_LENGTH = 8
NONCE_LENGTH = 32
MAC_LENGTH = 32
TAG_LENGTH = 16
KEY_LENGTH = 32
SALT_LENGTH = 4
MIN_PSK_LENGTH = 32
MAX_NODE_ID_LENGTH = 255

DATA_HEADER = struct.Struct("!BBH8sQ")
DATA_HEADER_LENGTH = DATA_HEADER.size  # 20
assert DATA_HEADER_LENGTH + TAG_LENGTH == CHANNEL_OVERHEAD

_HANDSHAKE_INFO = b"ipsec-ha channel v1 handshake"
_SESSION_INFO = b"ipsec-ha channel v1 session"


class FormatError(Exception):
    """Internal: a datagram that does not parse (counted as MALFORMED, never raised out)."""


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
    signed: bytes
    """Every byte before the MAC."""
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


def build_init(key: bytes, initiator_aid: bytes, ni: bytes, node_id: bytes) -> bytes:
    signed = _prefix(TYPE_INIT) + initiator_aid + ni + bytes([len(node_id)]) + node_id
    return signed + mac(key, signed)


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
        raise FormatError("truncated before the node ID")
    length = data[offset]
    end = offset + 1 + length
    if length == 0 or len(data) != end + MAC_LENGTH:
        raise FormatError("node ID length does not match the datagram length")
    return data[offset + 1 : end], data[:end], data[end:]


def parse_init(data: bytes) -> Init:
    aid_end = 4 + ASSOCIATION_ID_LENGTH
    nonce_end = aid_end + NONCE_LENGTH
    node_id, signed, tag = _node_id_and_mac(data, nonce_end)
    return Init(data[4:aid_end], data[aid_end:nonce_end], node_id, signed, tag)


def parse_resp(data: bytes) -> Resp:
    i_end = 4 + ASSOCIATION_ID_LENGTH
    r_end = i_end + ASSOCIATION_ID_LENGTH
    nonce_end = r_end + NONCE_LENGTH
    node_id, signed, tag = _node_id_and_mac(data, nonce_end)
    return Resp(data[4:i_end], data[i_end:r_end], data[r_end:nonce_end], node_id, signed, tag)


def aead_nonce(salt: bytes, seq: int) -> bytes:
    return salt + seq.to_bytes(8, "big")

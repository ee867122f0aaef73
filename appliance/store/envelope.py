"""Envelopes for the stored records that hold key material (encryption at rest).

Theory of operation
-------------------
A SAD entry holds the SA's keys, and so may an IKE SA blob.  The store keeps
both sealed, whatever the backend, so that a copy of the SQLite file or a
plain etcd range read yields no key.  Replay states and SPD entries hold no
key and stay in clear.

The at-rest key is derived from the cluster key (the channel's PSK) with
HKDF-SHA256 under a label of its own, so it is never a channel key.  An
envelope is::

    0xE1 | key ID (8) | nonce (12) | AES-256-GCM(record) with its 16-byte tag

The key ID is a second HKDF output of the same cluster key: it names the key
that sealed the record without revealing it, so a store that rotated its
cluster key can open records of a previous key (``[store].previous_psk_files``)
and tell a record of an unknown key from a tampered one.  The nonce is
random.  The associated data binds the ciphertext to the record's identity
(server ID, SA key, field) and to the envelope header, so a record copied to
another SA, another server ID or the other field does not open.

A record without the envelope tag is a clear record written before
encryption at rest (:data:`appliance.store._convert.ENTRY_FORMAT_WIRE_V1`);
the caller decides what to do with it (:mod:`.sealed` reads it and
``ipsec-ha store reseal`` seals it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: First byte of a sealed record (a clear entry starts with 0x01).
ENVELOPE_TAG = 0xE1
KEY_ID_LEN = 8
NONCE_LEN = 12
TAG_LEN = 16
_ID_END = 1 + KEY_ID_LEN
HEADER_LEN = _ID_END + NONCE_LEN
#: What sealing adds to a record.
OVERHEAD = HEADER_LEN + TAG_LEN

_KEY_INFO = b"ipsec-ha store at-rest v1 key"
_KEY_ID_INFO = b"ipsec-ha store at-rest v1 key id"


class EnvelopeError(Exception):
    """A sealed record does not open; the message says why, never what it holds."""


class UnknownKeyError(EnvelopeError):
    """The record was sealed under a key that is not configured."""

    def __init__(self, key_id: bytes) -> None:
        super().__init__(f"sealed under key {key_id.hex()}, which is not configured")
        self.key_id = key_id


@dataclass(frozen=True)
class AtRestKey:
    """One at-rest key and its ID, derived from one cluster key."""

    key_id: bytes
    aead: AESGCM

    @classmethod
    def derive(cls, cluster_key: bytes) -> AtRestKey:
        key = HKDF(hashes.SHA256(), 32, salt=None, info=_KEY_INFO).derive(cluster_key)
        key_id = HKDF(hashes.SHA256(), KEY_ID_LEN, salt=None, info=_KEY_ID_INFO).derive(cluster_key)
        return cls(key_id, AESGCM(key))

    def __repr__(self) -> str:  # never the key
        return f"AtRestKey({self.key_id.hex()})"


def is_sealed(record: bytes) -> bool:
    return len(record) >= OVERHEAD and record[0] == ENVELOPE_TAG


def key_id_of(record: bytes) -> bytes:
    """The ID of the key that sealed ``record`` (which must be sealed)."""
    return record[1:_ID_END]


class Sealer:
    """Seals with the current key; opens with the current key or a previous one."""

    def __init__(self, cluster_key: bytes, previous: tuple[bytes, ...] = ()) -> None:
        self.current = AtRestKey.derive(cluster_key)
        self._keys = {self.current.key_id: self.current}
        for old in previous:
            k = AtRestKey.derive(old)
            self._keys.setdefault(k.key_id, k)

    @property
    def key_ids(self) -> tuple[bytes, ...]:
        """Every key this sealer opens, the current one first."""
        return tuple(self._keys)

    def seal(self, record: bytes, context: bytes) -> bytes:
        """``record`` in an envelope under the current key, bound to ``context``."""
        nonce = os.urandom(NONCE_LEN)
        head = bytes([ENVELOPE_TAG]) + self.current.key_id
        return head + nonce + self.current.aead.encrypt(nonce, record, head + context)

    def open(self, envelope: bytes, context: bytes) -> bytes:
        """The record inside ``envelope``; :class:`EnvelopeError` if it does not open."""
        if not is_sealed(envelope):
            raise EnvelopeError("is not a sealed record")
        key = self._keys.get(key_id_of(envelope))
        if key is None:
            raise UnknownKeyError(key_id_of(envelope))
        nonce = envelope[_ID_END:HEADER_LEN]
        try:
            return key.aead.decrypt(nonce, envelope[HEADER_LEN:], envelope[:_ID_END] + context)
        except InvalidTag:
            raise EnvelopeError(
                f"does not authenticate under key {key.key_id.hex()} "
                "(tampered with, or moved from another record)"
            ) from None

    def is_current(self, envelope: bytes) -> bool:
        """Sealed under the current key (nothing to re-seal)."""
        return is_sealed(envelope) and key_id_of(envelope) == self.current.key_id

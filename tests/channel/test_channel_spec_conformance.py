"""The endpoint's bytes are exactly what docs/protocol.md section 6 describes.

The expected values are computed here from the document's formulas with
hashlib/hmac and the cryptography primitives directly, not with the
package's own helpers, so a change of format or key schedule shows up.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.channel import ChannelEndpoint, DataReceived, Side

pytestmark = pytest.mark.unit

PSK = bytes.fromhex("00112233445566778899aabbccddeeff" * 2)


def _counter_random(seed: int):  # type: ignore[no-untyped-def]
    """Deterministic "random" bytes so that the exchange is reproducible."""
    counter = itertools.count()

    def draw(n: int) -> bytes:
        return hashlib.sha256(bytes([seed]) + next(counter).to_bytes(4, "big")).digest()[:n]

    return draw


def _hkdf(salt: bytes | None, info: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt=salt, info=info).derive(PSK)


def test_handshake_and_first_datagram_match_the_specification() -> None:
    client = ChannelEndpoint(PSK, "gw-a", Side.CLIENT, random_bytes=_counter_random(1))
    server = ChannelEndpoint(PSK, "store-1", Side.SERVER, random_bytes=_counter_random(2))
    client_draw, server_draw = _counter_random(1), _counter_random(2)
    aid_i, ni = client_draw(8), client_draw(32)
    cookie_secret, aid_r, nr = server_draw(32), server_draw(8), server_draw(32)
    k_hs = _hkdf(None, b"ipsec-ha channel v1 handshake", 32)
    client_addr = ("198.51.100.10", 40000)

    def hmac_sha256(key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, hashlib.sha256).digest()

    client.connect(("192.0.2.10", 4501), 0.0)
    ((init, _),) = client.datagrams_to_send(0.0)
    identity = aid_i + ni + bytes([4]) + b"gw-a"
    signed = bytes([1, 2, 0, 0]) + identity + bytes([0]) + bytes(2)  # no cookie, no padding
    assert init == signed + hmac_sha256(k_hs, signed)

    # The first INIT is answered by a COOKIE and leaves no state at the server.
    server.receive_datagram(init, client_addr, 0.0)
    ((cookie_datagram, _),) = server.datagrams_to_send(0.0)
    assert not server.associations()
    address = repr(client_addr).encode()
    cookie = hmac_sha256(cookie_secret, len(address).to_bytes(2, "big") + address + identity)[:16]
    signed_c = bytes([4, 2, 0, 0]) + aid_i + cookie
    assert cookie_datagram == signed_c + hmac_sha256(k_hs, ni + signed_c)
    assert len(cookie_datagram) == 60

    # The repeated INIT carries the cookie and is zero-padded to 340 octets, the largest RESP.
    client.receive_datagram(cookie_datagram, ("192.0.2.10", 4501), 0.0)
    ((init2, _),) = client.datagrams_to_send(0.0)
    unpadded = 4 + len(identity) + 1 + 16 + 2 + 32
    padding = 340 - unpadded
    signed = (
        bytes([1, 2, 0, 0]) + identity + bytes([16]) + cookie + padding.to_bytes(2, "big")
    ) + bytes(padding)
    assert init2 == signed + hmac_sha256(k_hs, signed)
    assert len(init2) == 340

    server.receive_datagram(init2, client_addr, 0.0)
    ((resp, _),) = server.datagrams_to_send(0.0)
    signed_r = bytes([2, 2, 0, 0]) + aid_i + aid_r + nr + bytes([7]) + b"store-1"
    assert resp == signed_r + hmac_sha256(k_hs, init2 + signed_r)

    okm = _hkdf(
        ni + nr,
        b"ipsec-ha channel v1 session" + aid_i + aid_r + b"\x04gw-a" + b"\x07store-1",
        72,
    )
    k_i2r, salt_i2r = okm[:32], okm[32:36]
    k_r2i, salt_r2i = okm[36:68], okm[68:72]

    client.receive_datagram(resp, ("192.0.2.10", 4501), 0.0)
    ((confirm, _),) = client.datagrams_to_send(0.0)
    header = bytes([3, 2, 0, 0]) + aid_r + (1).to_bytes(8, "big")
    assert confirm == header + AESGCM(k_i2r).encrypt(salt_i2r + (1).to_bytes(8, "big"), b"", header)
    server.receive_datagram(confirm, client_addr, 0.0)

    client.send(b"request", 0.0)
    ((data, _),) = client.datagrams_to_send(0.0)
    header = bytes([3, 2, 0, 0]) + aid_r + (2).to_bytes(8, "big")
    nonce = salt_i2r + (2).to_bytes(8, "big")
    assert data == header + AESGCM(k_i2r).encrypt(nonce, b"request", header)
    (event,) = server.receive_datagram(data, client_addr, 0.0)
    assert isinstance(event, DataReceived)

    server.send(b"response", 0.0, association=event.association)
    ((reply, _),) = server.datagrams_to_send(0.0)
    header = bytes([3, 2, 0, 0]) + aid_i + (1).to_bytes(8, "big")
    nonce = salt_r2i + (1).to_bytes(8, "big")
    assert reply == header + AESGCM(k_r2i).encrypt(nonce, b"response", header)

    # CLOSE: a DATA-shaped datagram of type 5 with an empty plaintext, next sequence number.
    client.disconnect()
    ((close, _),) = client.datagrams_to_send(0.0)
    header = bytes([5, 2, 0, 0]) + aid_r + (3).to_bytes(8, "big")
    nonce = salt_i2r + (3).to_bytes(8, "big")
    assert close == header + AESGCM(k_i2r).encrypt(nonce, b"", header)
    assert len(close) == 36
    server.receive_datagram(close, client_addr, 0.0)
    assert not server.associations()

"""The protected channel between nodes and the SA store (docs/protocol.md section 6).

Theory of operation
-------------------
The draft requires SA_Stor / SA_Retr to travel with confidentiality,
integrity and replay protection.  A fresh node has no IPsec SA yet (that is
what it is about to fetch), so the channel provides those properties itself,
over plain UDP, from a cluster pre-shared key (PSK).  It may also run inside
ESP.

Rules this package keeps:

* **Sans-IO.**  ``ChannelEndpoint`` never touches a socket or a clock.  Feed
  it ``receive_datagram(data, addr, now)`` and ``handle_timer(now)``; take
  its output from ``datagrams_to_send(now)``, ``get_timer()`` and the
  events (returned by ``receive_datagram``, and ``next_event()`` for those
  raised by timers).
* **Fresh keys per association.**  A client sends INIT (its association ID,
  a 32-byte random nonce Ni, its node ID, HMAC under a key derived from the
  PSK); the server answers RESP (its association ID, nonce Nr, node ID, HMAC
  over INIT and RESP).  Session keys = HKDF-SHA256(PSK, Ni | Nr, IDs), one
  key and nonce salt per direction.  A restarted node draws new nonces, so
  it can never reuse a (key, nonce) pair.
* **No state before the client proves its address** (IKEv2 cookies, DTLS
  HelloVerifyRequest).  A first INIT gets a COOKIE: a MAC under a random
  secret of this process (rotated every 30 s) over the source address and
  the INIT's identity.  Only an INIT that repeats it creates an association.
  A replayed INIT therefore costs a table entry only if it comes from the
  address its cookie was made for, while that cookie is valid, and its
  nonce has not been used: a store restart (new secret) invalidates every
  recorded INIT.  The INIT with the cookie is padded to the largest RESP,
  so no handshake reply is larger than the datagram that caused it.
* **Every data datagram is AES-256-GCM sealed.**  Its header (type,
  version, receiver association ID, 64-bit sequence number) is the AAD; the
  sequence number is the nonce counter and never wraps: the client rekeys
  after ``rekey_after_messages`` datagrams or ``rekey_after_seconds``.
* **Sliding anti-replay window** (1024 by default, RFC 4303 3.4.3 style),
  checked before decryption and advanced only after the tag verified.
* **Bad input never raises.**  A datagram that is malformed, forged,
  replayed, or for an unknown association is dropped and counted per
  ``DropReason`` in ``endpoint.drops``; the drop is logged with reason, peer
  and length only -- never content.  Errors split as h11's do:
  ``LocalChannelError`` (the caller's misuse: a bad key or node ID, sending
  with no association, a full queue) is raised; ``RemoteChannelError`` (a
  datagram that does not parse) stays inside and becomes a MALFORMED drop.
  Both are ``ChannelError``.
* **Bounded tables.**  A client says CLOSE (authenticated like data) when it
  is done, and the server forgets the association at once.  Associations and
  half-open ones (no authenticated data yet) are limited in total and per
  source address; a new association evicts the least recently used one
  (of its own address when that address is at its limit, else of the
  address holding the most), so a new client always gets in and one
  address cannot crowd out the others.

Usage (client)::

    ep = ChannelEndpoint(psk, "gw-a", Side.CLIENT)
    ep.connect(("192.0.2.10", 4501), now)
    ep.send(encode_message(request), now)     # buffered until the handshake is done
    for datagram, addr in ep.datagrams_to_send(now): sock.sendto(datagram, addr)
    for event in ep.receive_datagram(data, addr, now): ...  # DataReceived(data=...)
    ep.disconnect()                           # CLOSE on every association; send them, then stop

Usage (server): ``ChannelEndpoint(psk, "store-1", Side.SERVER)``; answer a
``DataReceived`` event with ``ep.send(reply, now, association=event.association)``.
"""

from appliance.channel._errors import ChannelError, LocalChannelError, RemoteChannelError
from appliance.channel.endpoint import ChannelConfig, ChannelEndpoint, Side
from appliance.channel.events import (
    AssociationClosed,
    DataReceived,
    DropReason,
    Event,
    HandshakeCompleted,
    HandshakeFailed,
    NetworkAddress,
)

__all__ = [
    "AssociationClosed",
    "ChannelConfig",
    "ChannelEndpoint",
    "ChannelError",
    "DataReceived",
    "DropReason",
    "Event",
    "HandshakeCompleted",
    "HandshakeFailed",
    "LocalChannelError",
    "NetworkAddress",
    "RemoteChannelError",
    "Side",
]

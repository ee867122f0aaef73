"""SA_Stor / SA_Retr codec: bytes in, objects out (docs/protocol.md section 5).

Theory of operation
-------------------
This package only translates.  It never opens a socket, reads a clock or
keeps state between calls, so every function can be fuzzed with arbitrary
bytes.

* ``decode_message(data)`` turns one decrypted channel payload into a
  ``Message``: a header (exchange type, message ID, response and more-pages
  flags) and a tuple of payload objects.  ``encode_message`` is its inverse.
  ``decode_message(encode_message(m)) == m`` for every valid ``m``.
* Errors say whose fault they are, as h11's do.  Anything wrong with the
  input -- truncated, oversized, an unknown critical payload, a length that
  does not add up -- raises ``RemoteWireError``, never another exception;
  its ``status`` is the status code a responder should put in its Notify
  reply (MALFORMED or UNSUPPORTED).  A value that cannot be encoded (a field
  out of range, an entry too large for any page) raises ``LocalWireError``.
  Both are ``WireError``, for code that treats them alike.
* ``split_message(data)`` checks the header and splits the payload chain
  without decoding a payload; ``decode_message`` decodes after it, and the
  store's fast path keeps the entry bodies as they came.
* An unknown payload type without the critical bit is kept as
  ``UnknownPayload`` and otherwise ignored, as in IKEv2.
* An SPD entry travels as three generic payloads (SPD Entry, TSi, TSr); here
  it is one ``SpdEntryPayload`` holding both traffic selectors.
* ``paginate(entries, max_datagram, fixed_payloads)`` splits the entries of
  a bulk SA_Retr reply (single payloads, or tuples that must stay together
  such as a SAD Entry and its Replay State) into pages whose protected
  datagrams stay under ``max_datagram`` bytes, so no reply needs IP
  fragmentation; ``page_budget`` gives the room one page has for entries.
* ``entries.py`` converts SAD/SPD payloads to and from the model objects of
  ``appliance.model`` (``sad_to_payload`` / ``payload_to_sad`` and the SPD
  pair), losslessly.
* ``Buffer`` is the bounds-checked cursor every ``pull_*`` / ``push_*``
  function works on; the store's fast path (``appliance.store._rawwire``)
  decodes payload bodies with it too.
"""

from appliance.wire._buffer import Buffer
from appliance.wire._errors import LocalWireError, RemoteWireError, WireError
from appliance.wire.constants import (
    CHANNEL_OVERHEAD,
    DEFAULT_MAX_DATAGRAM,
    DEFAULT_PORT,
    ExchangeType,
    IdType,
    PayloadType,
    ProtocolId,
    RemovedKind,
    Status,
)
from appliance.wire.entries import (
    AttributeType,
    apply_replay_update,
    payload_to_sad,
    payload_to_spd,
    replay_update_for,
    sad_to_payload,
    spd_to_payload,
)
from appliance.wire.messages import (
    Chunk,
    Message,
    RawMessage,
    decode_message,
    describe,
    encode_message,
    encoded_payload_length,
    page_budget,
    paginate,
    peek_header,
    pull_payload,
    pull_spd_entry,
    split_message,
)
from appliance.wire.payloads import (
    Attribute,
    Delete,
    EpochPayload,
    IkeSaPayload,
    Notify,
    PagePayload,
    Payload,
    RemovedPayload,
    ReplayStatePayload,
    RevisionPayload,
    SadEntryPayload,
    SaLookupPayload,
    ServerIdPayload,
    SpdEntryPayload,
    TrafficSelector,
    UnknownPayload,
)

__all__ = [
    "CHANNEL_OVERHEAD",
    "DEFAULT_MAX_DATAGRAM",
    "DEFAULT_PORT",
    "Attribute",
    "AttributeType",
    "Buffer",
    "Chunk",
    "Delete",
    "EpochPayload",
    "ExchangeType",
    "IdType",
    "IkeSaPayload",
    "LocalWireError",
    "Message",
    "Notify",
    "PagePayload",
    "Payload",
    "PayloadType",
    "ProtocolId",
    "RawMessage",
    "RemoteWireError",
    "RemovedKind",
    "RemovedPayload",
    "ReplayStatePayload",
    "RevisionPayload",
    "SaLookupPayload",
    "SadEntryPayload",
    "ServerIdPayload",
    "SpdEntryPayload",
    "Status",
    "TrafficSelector",
    "UnknownPayload",
    "WireError",
    "apply_replay_update",
    "decode_message",
    "describe",
    "encode_message",
    "encoded_payload_length",
    "page_budget",
    "paginate",
    "payload_to_sad",
    "payload_to_spd",
    "peek_header",
    "pull_payload",
    "pull_spd_entry",
    "replay_update_for",
    "sad_to_payload",
    "spd_to_payload",
    "split_message",
]

"""The codec's errors: ours (a value we cannot encode) apart from the peer's (bytes we cannot read).

As in h11, whose fault an error is decides what happens next: a
``RemoteWireError`` is answered with an error reply carrying its ``status``;
a ``LocalWireError`` is a bug or a misuse in this process and must not be
blamed on the peer.  ``WireError`` is the base for code that handles both
alike.
"""

from __future__ import annotations

from appliance.errors import ApplianceError
from appliance.wire.constants import Status


class WireError(ApplianceError):
    """Either a value that cannot be encoded or bytes that are not a valid message.

    ``status`` is the status code a responder puts in its error reply.
    """

    status: Status

    def __init__(self, message: str, status: Status = Status.MALFORMED) -> None:
        super().__init__(message)
        self.status = status


class LocalWireError(WireError):
    """A value the caller asked to encode does not fit the format (raised by encoders).

    Its status is INTERNAL: the fault is this process's, not the peer's.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, Status.INTERNAL)


class RemoteWireError(WireError):
    """Bytes from the peer that are not a valid message (raised by decoders).

    ``status`` is MALFORMED, or UNSUPPORTED for a version, exchange type,
    critical payload or attribute this code does not implement.
    """

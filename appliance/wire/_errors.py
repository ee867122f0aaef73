"""The one exception the codec raises."""

from __future__ import annotations

from appliance.errors import ApplianceError
from appliance.wire.constants import Status


class WireError(ApplianceError):
    """Bytes that are not a valid message, or a value that cannot be encoded.

    ``status`` is the status code a responder puts in its error reply
    (MALFORMED unless the problem is an unsupported version or critical payload).
    """

    def __init__(self, message: str, status: Status = Status.MALFORMED) -> None:
        super().__init__(message)
        self.status = status

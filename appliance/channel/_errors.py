"""The channel's errors: the caller's misuse apart from what the peer sent (as in h11).

``LocalChannelError`` leaves the endpoint: a bad key, node ID or
configuration, sending with no association, a full queue, sequence numbers
used up.  ``RemoteChannelError`` never does: a datagram that does not parse
is dropped and counted as ``DropReason.MALFORMED`` (a peer must not be able
to make the endpoint raise), so it exists to name the fault inside the
package.  ``ChannelError`` is the base of both.
"""

from __future__ import annotations

from appliance.errors import ApplianceError


class ChannelError(ApplianceError):
    """Any error of the protected channel."""


class LocalChannelError(ChannelError):
    """The caller misused the channel: bad key or node ID, no association to send on."""


class RemoteChannelError(ChannelError):
    """A datagram that does not parse; caught inside the endpoint and counted as a drop."""

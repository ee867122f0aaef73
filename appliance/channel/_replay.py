"""Sliding anti-replay window (RFC 4303 section 3.4.3, without ESN folding).

Sequence numbers here are full 64-bit values, so no high-order bits need
guessing.  ``check`` runs before decryption (cheap rejection); ``update``
only after the tag verified, so forged datagrams cannot move the window.
"""

from __future__ import annotations

from appliance.channel.events import DropReason


class ReplayWindow:
    """Which of the last ``size`` sequence numbers have been received."""

    __slots__ = ("_bitmap", "_mask", "size", "top")

    def __init__(self, size: int = 1024) -> None:
        if size < 32:
            raise ValueError("the anti-replay window must be at least 32")
        self.size = size
        self.top = 0
        """Highest authenticated sequence number so far (0: none yet)."""
        self._bitmap = 0
        """Bit i set: sequence number ``top - i`` was received."""
        self._mask = (1 << size) - 1

    def check(self, seq: int) -> DropReason | None:
        if seq > self.top:
            return None
        offset = self.top - seq
        if offset >= self.size:
            return DropReason.OUTSIDE_WINDOW
        if (self._bitmap >> offset) & 1:
            return DropReason.REPLAYED
        return None

    def update(self, seq: int) -> None:
        if seq > self.top:
            shift = seq - self.top
            self._bitmap = ((self._bitmap << shift) | 1) & self._mask if shift < self.size else 1
            self.top = seq
        else:
            self._bitmap |= 1 << (self.top - seq)

"""Which verdict messages give a set of verdicts: one VERDICT_BATCH where it may (sans-IO).

``NFQNL_MSG_VERDICT_BATCH`` gives one verdict to every packet still queued
with an id up to the one it names.  The kernel numbers a queue's packets
in the order it hands them to us, so a batch is safe exactly when every
packet received before the named one and still waiting gets the same
verdict: a run at the front of what is waiting.  A packet held back (its
retrieval under way) ends the run; verdicts behind it go one by one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class VerdictMessage:
    """One message to send: ``batch`` covers every waiting id up to ``packet_id``."""

    packet_id: int
    accept: bool
    batch: bool


class VerdictPlanner:
    """Tracks the ids received and not yet decided; plans the messages for new verdicts.

    Not thread-safe (the queue's one reader owns it).  The kernel keeps at
    most its queue length of packets waiting, which bounds what this holds.
    """

    def __init__(self) -> None:
        self._waiting: dict[int, None] = {}  # in the order received, which is id order

    @property
    def waiting(self) -> int:
        """Packets received whose verdict was not planned yet."""
        return len(self._waiting)

    def received(self, packet_id: int) -> None:
        self._waiting[packet_id] = None

    def plan(self, verdicts: Iterable[tuple[int, bool]]) -> list[VerdictMessage]:
        """The messages for ``verdicts`` (packet id, accept), in sending order.

        The decided run at the front of the waiting packets comes first, one
        message per stretch of equal verdicts (a batch when it covers more
        than one); the other verdicts follow one by one, in the order given.
        """
        decided = dict(verdicts)
        front: list[int] = []
        for packet_id in self._waiting:
            if packet_id not in decided:
                break  # still held: nothing behind it may be batched
            front.append(packet_id)
        messages: list[VerdictMessage] = []
        stretch = 0
        for i, packet_id in enumerate(front):
            del self._waiting[packet_id]
            accept = decided.pop(packet_id)
            stretch += 1
            if i + 1 < len(front) and decided[front[i + 1]] == accept:
                continue
            messages.append(VerdictMessage(packet_id, accept, stretch > 1))
            stretch = 0
        for packet_id, accept in decided.items():
            self._waiting.pop(packet_id, None)
            messages.append(VerdictMessage(packet_id, accept, False))
        return messages

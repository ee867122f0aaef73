"""The store client's retransmission timeout, learnt from its round trips (sans-IO).

A fixed timeout breaks bulk stores on a loaded store: a window of SA_Stor
datagrams is committed one group after another, so the last request of a
window waits for all the others' commits.  With ``timeout_s = 0.2`` and three
doublings a request gives up after 3 s, and a store that needs 4 s for a
window of 65 kB datagrams (the lab VM at 5,000 pairs) never got a bulk store
through: each failure restarted the active node's resync from the start.

So the client estimates the round trip as TCP does (RFC 6298, section 2):
a smoothed RTT and its variation from first transmissions only (Karn's
rule: the answer to a retransmitted request cannot be matched to one
transmission), and waits ``SRTT + 4 * RTTVAR``.  The configured timeout stays
the floor (a fast store keeps its fast retransmission); ``MAX_RTO_S`` bounds
how long a silent store is waited for before the exponential backoff starts.
"""

from __future__ import annotations

MAX_RTO_S = 5.0
"""The learnt timeout never exceeds this (a dead store is noticed within seconds)."""

_ALPHA = 1 / 8
_BETA = 1 / 4
_K = 4


class RetransmissionTimer:
    """RFC 6298 estimator: ``observe`` first-transmission round trips, read ``rto``."""

    def __init__(self, floor_s: float, ceiling_s: float = MAX_RTO_S) -> None:
        if floor_s <= 0:
            raise ValueError("the retransmission timeout must be positive")
        self.floor_s = floor_s
        self.ceiling_s = max(floor_s, ceiling_s)
        self.srtt: float | None = None
        self.rttvar = 0.0

    def observe(self, rtt_s: float) -> None:
        """Take one round trip of a request answered after its first transmission."""
        rtt_s = max(0.0, rtt_s)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt_s, rtt_s / 2
            return
        self.rttvar = (1 - _BETA) * self.rttvar + _BETA * abs(self.srtt - rtt_s)
        self.srtt = (1 - _ALPHA) * self.srtt + _ALPHA * rtt_s

    @property
    def rto(self) -> float:
        """Seconds to wait for an answer before the first retransmission."""
        if self.srtt is None:
            return self.floor_s
        return min(self.ceiling_s, max(self.floor_s, self.srtt + _K * self.rttvar))

    def backoff(self, waited_s: float, attempts: int) -> float:
        """The wait after the ``attempts``-th transmission of a request that waited ``waited_s``.

        Doubling, as before; a learnt timeout doubles only up to the ceiling, so a store
        that was slow and then died is given up on within seconds, not minutes.  From
        the configured floor the doubling is what it always was.
        """
        doubled_floor: float = self.floor_s * 2.0**attempts
        return min(waited_s * 2, max(self.ceiling_s, doubled_floor))

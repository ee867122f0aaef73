"""nfnetlink_queue: receive queued packets and give their verdicts.

``codec`` is the sans-IO part (bytes in, events out; requests and verdicts
to bytes), the only nfnetlink_queue codec at run time: the pyroute2-style
declarations it is held to live in ``tests/nfqueue/nfqueue_oracle.py``.
``batch`` plans which verdicts may go as one VERDICT_BATCH (sans-IO),
``constants`` has the kernel's numbers, ``socket`` the thin adapter
:class:`NfQueue`.
"""

from appliance.nfqueue.batch import VerdictMessage, VerdictPlanner
from appliance.nfqueue.codec import (
    NetlinkError,
    QueuedPacket,
    decode,
    encode_bind,
    encode_unbind,
    encode_verdict,
    encode_verdict_batch,
)
from appliance.nfqueue.socket import NfQueue

__all__ = [
    "NetlinkError",
    "NfQueue",
    "QueuedPacket",
    "VerdictMessage",
    "VerdictPlanner",
    "decode",
    "encode_bind",
    "encode_unbind",
    "encode_verdict",
    "encode_verdict_batch",
]

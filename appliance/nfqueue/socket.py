"""The thin adapter: an nfnetlink_queue socket bound to one queue, in a namespace.

All encoding and decoding is in :mod:`appliance.nfqueue.codec`; this module
only opens the socket (inside ``netns``, through
:func:`appliance.netns.run_in_netns`, so the socket belongs to that
namespace while the caller's thread never moves), sends, and receives.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
from collections.abc import Iterable
from types import TracebackType

from appliance.errors import KernelError
from appliance.netns import run_in_netns
from appliance.nfqueue import codec
from appliance.nfqueue import constants as c
from appliance.nfqueue.batch import VerdictPlanner
from appliance.nfqueue.codec import NetlinkError, QueuedPacket

log = logging.getLogger(__name__)

DEFAULT_COPY_RANGE = 512
"""Bytes of each packet copied to us: the headers up to the SPI, with room for IPv6 options."""
DEFAULT_MAXLEN = 1024
"""Packets the kernel holds for us before it drops new ones (no fail-open)."""
DEFAULT_RCVBUF = 4 << 20
RECV_SIZE = 1 << 16
SO_RCVBUFFORCE = 33
MAX_VERDICTS_PER_SEND = 1024
"""Verdict messages sent in one datagram (the kernel reads every message in it)."""
BIND_TIMEOUT = 2.0
"""Seconds to wait for the kernel's ack of the bind (it answers at once)."""


def _bind_error(queue_num: int, netns: str | None, err: int) -> KernelError:
    where = f" in network namespace {netns!r}" if netns else ""
    if err in (errno.EPERM, errno.EBUSY):
        # The kernel says EPERM both for a queue bound to another socket and a missing right.
        why = "another socket holds it, or this process lacks CAP_NET_ADMIN there"
    elif err in (errno.ENOENT, errno.EOPNOTSUPP, errno.EPROTONOSUPPORT):
        why = "the kernel lacks nfnetlink_queue (CONFIG_NETFILTER_NETLINK_QUEUE)"
    else:
        why = f"{errno.errorcode.get(err, str(err))} ({os.strerror(err)})"
    return KernelError(f"cannot bind NFQUEUE {queue_num}{where}: {why}")


def _open(rcvbuf: int) -> socket.socket:
    try:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, c.NETLINK_NETFILTER
        )
    except OSError as exc:
        raise KernelError(f"cannot open a netfilter netlink socket: {exc.strerror}") from None
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, 0))
    except OSError as exc:
        sock.close()
        raise KernelError(f"cannot set up the netfilter netlink socket: {exc.strerror}") from None
    return sock


class NfQueue:
    """Packets of NFQUEUE ``queue_num`` in ``netns`` (``None``: the caller's namespace).

    Binding happens in the constructor, in copy-packet mode; a queue that
    another socket holds, or a kernel without nfnetlink_queue, raises
    :class:`~appliance.errors.KernelError` and leaves nothing open.
    Not thread-safe: one thread receives and gives verdicts.
    """

    def __init__(
        self,
        netns: str | None,
        queue_num: int,
        *,
        copy_range: int = DEFAULT_COPY_RANGE,
        maxlen: int = DEFAULT_MAXLEN,
        rcvbuf: int = DEFAULT_RCVBUF,
    ) -> None:
        bind = codec.encode_bind(queue_num, 1, copy_range=copy_range, maxlen=maxlen)
        self.netns = netns
        self.queue_num = queue_num
        self.overruns = 0
        """Times the socket buffer overflowed (the kernel dropped queued packets)."""
        self.verdict_errors = 0
        """Verdicts the kernel refused (e.g. an id it no longer holds)."""
        self.drained = False
        """The last :meth:`receive` read the socket dry (it did not stop at ``max_packets``)."""
        self._seq = 1
        self._pending: list[QueuedPacket] = []
        self._planner = VerdictPlanner()
        self._buffer = bytearray(RECV_SIZE)
        self._sock: socket.socket | None = run_in_netns(netns, lambda: _open(rcvbuf))
        try:
            self._request(bind, 1)
        except BaseException:
            self._sock.close()
            self._sock = None
            raise

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise KernelError(f"NFQUEUE {self.queue_num} is closed")
        return self._sock

    def _request(self, data: bytes, seq: int) -> None:
        sock = self._socket()
        sock.send(data)
        ready, _, _ = select.select([sock], [], [], BIND_TIMEOUT)
        while ready:
            answer: NetlinkError | None = None
            for event in codec.decode(sock.recv(RECV_SIZE)):
                if isinstance(event, QueuedPacket):
                    self._pending.append(event)  # queued right after the bind: keep
                elif event.seq == seq:
                    answer = event
            if answer is not None:
                if answer.error:
                    raise _bind_error(self.queue_num, self.netns, -answer.error)
                return
            ready, _, _ = select.select([sock], [], [], BIND_TIMEOUT)
        raise KernelError(f"no answer from the kernel to binding NFQUEUE {self.queue_num}")

    def fileno(self) -> int:
        """The socket's descriptor, to wait on with ``select``."""
        return self._socket().fileno()

    def receive(self, timeout: float | None = 0.0, max_packets: int = 64) -> list[QueuedPacket]:
        """Queued packets: waits up to ``timeout`` s (``None``: forever) for the first, then
        reads what is there, up to ``max_packets``; :attr:`drained` tells which ended it."""
        sock = self._socket()
        packets, self._pending = self._pending, []
        self.drained = False
        if not packets:
            ready, _, _ = select.select([sock], [], [], timeout)
            if not ready:
                self.drained = True
                return []
        buffer = self._buffer
        view = memoryview(buffer)
        while len(packets) < max_packets:
            try:
                size = sock.recv_into(buffer, RECV_SIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                self.drained = True
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # The kernel dropped what did not fit; the socket goes on working.
                    self.overruns += 1
                    log.warning("NFQUEUE %d: receive buffer overflowed", self.queue_num)
                    continue
                raise KernelError(
                    f"NFQUEUE {self.queue_num}: receive failed: {exc.strerror}"
                ) from None
            for event in codec.decode(view[:size]):
                if isinstance(event, QueuedPacket):
                    packets.append(event)
                elif event.error:
                    self.verdict_errors += 1
                    log.debug("NFQUEUE %d: verdict refused: %d", self.queue_num, event.error)
        for packet in packets:
            self._planner.received(packet.packet_id)
        return packets

    def verdict(self, packet_id: int, accept: bool) -> None:
        """Accept (let the kernel go on with the packet) or drop one queued packet."""
        self.verdicts([(packet_id, accept)])

    def verdicts(self, verdicts: Iterable[tuple[int, bool]]) -> None:
        """Give verdicts (packet id, accept), in one datagram; a run of equal verdicts for
        the oldest packets waiting becomes one VERDICT_BATCH (see :mod:`.batch`)."""
        messages = self._planner.plan(verdicts)
        for start in range(0, len(messages), MAX_VERDICTS_PER_SEND):
            data = []
            for m in messages[start : start + MAX_VERDICTS_PER_SEND]:
                self._seq = (self._seq + 1) & 0xFFFFFFFF
                encode = codec.encode_verdict_batch if m.batch else codec.encode_verdict
                data.append(encode(self.queue_num, m.packet_id, m.accept, self._seq))
            try:
                self._socket().send(b"".join(data))
            except OSError as exc:
                raise KernelError(
                    f"NFQUEUE {self.queue_num}: cannot send a verdict: {exc.strerror}"
                ) from None

    def close(self) -> None:
        """Unbind and close; the kernel drops packets still waiting for a verdict."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):  # closing the socket unbinds as well
            sock.send(codec.encode_unbind(self.queue_num, 0))
        sock.close()

    def __enter__(self) -> NfQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

"""The NETLINK_XFRM adapter: one socket per network namespace, and the operations.

Messages are packed and parsed by ``codec`` (and ``codec_migrate``); the
socket itself is a plain ``AF_NETLINK`` socket rather than pyroute2's
``NetlinkSocket``, because batched installs need control that pyroute2's
request loop hides: many requests per ``sendmsg`` without waiting for acks,
extended acks (``NETLINK_EXT_ACK``) and capped error echoes
(``NETLINK_CAP_ACK``).

A socket opened for a named namespace is created by
:func:`appliance.netns.run_in_netns` in that namespace's worker thread; the
socket stays bound to that namespace for its whole life.
"""

from __future__ import annotations

import errno
import queue
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

from appliance.model import (
    IPPROTO_ESP,
    Address,
    LifetimeCur,
    Mark,
    ReplayState,
    ReplayStateEsn,
    SadEntry,
    Selector,
    SpdEntry,
)
from appliance.netns import run_in_netns
from appliance.xfrm import codec, codec_migrate
from appliance.xfrm import constants as c
from appliance.xfrm.netlink import RawMessage, describe_errno, iter_messages, parse_error
from appliance.xfrm.per_socket import is_per_socket_message
from appliance.xfrm.types import AeState, BatchFailure, KmAddress, Migration, XfrmError

SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
DEFAULT_RCVBUF = 32 << 20
DEFAULT_SNDBUF = 4 << 20
BATCH_CHUNK = 1 << 20
"""Bytes of requests per sendmsg in a batch (must stay below the send buffer)."""
RECV_SIZE = 1 << 20
DUMP_RETRIES = 5


def _new_socket(groups: int, rcvbuf: int, sndbuf: int) -> socket.socket:
    try:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, c.NETLINK_XFRM
        )
    except OSError as exc:
        if exc.errno == errno.EPROTONOSUPPORT:
            raise XfrmError(
                "kernel lacks XFRM netlink (CONFIG_XFRM_USER; try 'modprobe xfrm_user')",
                exc.errno,
            ) from None
        raise XfrmError(
            f"cannot open an XFRM netlink socket: {exc.strerror}", exc.errno or 0
        ) from None
    try:
        for force, plain, size in (
            (SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf),
            (SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf),
        ):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, size)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
        sock.setsockopt(c.SOL_NETLINK, c.NETLINK_EXT_ACK, 1)
        sock.setsockopt(c.SOL_NETLINK, c.NETLINK_CAP_ACK, 1)
        sock.bind((0, 0))
        for group in range(1, c.XFRMNLGRP_MAX + 1):
            if groups & (1 << (group - 1)):
                sock.setsockopt(c.SOL_NETLINK, c.NETLINK_ADD_MEMBERSHIP, group)
    except OSError as exc:
        sock.close()
        raise XfrmError(
            f"cannot set up the XFRM netlink socket: {exc.strerror}", exc.errno or 0
        ) from None
    return sock


def open_xfrm_socket(
    netns: str | None,
    groups: int = 0,
    rcvbuf: int = DEFAULT_RCVBUF,
    sndbuf: int = DEFAULT_SNDBUF,
) -> socket.socket:
    """A NETLINK_XFRM socket in ``netns`` (None: the caller's namespace).

    ``groups`` is a bit mask of multicast groups, bit ``n-1`` for group
    ``n`` (see :func:`group_mask`).

    A bad name is a ``UsageError``, a missing namespace a ``KernelError``
    (see :mod:`appliance.netns`).
    """
    return run_in_netns(netns, lambda: _new_socket(groups, rcvbuf, sndbuf))


def group_mask(groups: Iterable[int]) -> int:
    """Bit mask for ``XFRMNLGRP_*`` group numbers."""
    mask = 0
    for group in groups:
        if not 1 <= group <= c.XFRMNLGRP_MAX:
            raise XfrmError(f"unknown XFRM multicast group {group}")
        mask |= 1 << (group - 1)
    return mask


def _entry_context(entry: SadEntry | SpdEntry) -> tuple[int | None, tuple[str, ...]]:
    """Protocol and algorithm names of an entry, for error messages (never keys)."""
    if not isinstance(entry, SadEntry):
        return None, ()
    algs = (entry.aead, entry.crypt, entry.auth_trunc or entry.auth, entry.comp)
    return entry.proto, tuple(a.name for a in algs if a is not None)


_DIR_NAMES = {c.XFRM_POLICY_IN: "in", c.XFRM_POLICY_OUT: "out", c.XFRM_POLICY_FWD: "fwd"}


def _sa_id_label(daddr: Address, spi: int, proto: int) -> str:
    return f"SA spi 0x{spi:08x} dst {daddr} proto {proto}"


class XfrmSocket:
    """NETLINK_XFRM requests in one network namespace.

    Usage::

        with XfrmSocket(netns="ns1") as xs:
            for entry in xs.dump_sad():
                ...

    Every method raises :class:`XfrmError` (a ``KernelError``) with a message
    naming the SA or policy when the kernel refuses.
    """

    def __init__(
        self,
        netns: str | None = None,
        *,
        rcvbuf: int = DEFAULT_RCVBUF,
        sndbuf: int = DEFAULT_SNDBUF,
    ) -> None:
        self.netns = netns
        self._sock = open_xfrm_socket(netns, 0, rcvbuf, sndbuf)
        self._seq = 0
        self._buf = bytearray(RECV_SIZE)

    @classmethod
    def from_socket(cls, sock: Any, netns: str | None = None) -> XfrmSocket:
        """Wrap an already open socket (or a test double with send/recv_into/close)."""
        self = cls.__new__(cls)
        self.netns = netns
        self._sock = sock
        self._seq = 0
        self._buf = bytearray(RECV_SIZE)
        return self

    # -- plumbing -------------------------------------------------------------

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    def __enter__(self) -> XfrmSocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def fileno(self) -> int:
        """The socket's file descriptor."""
        return self._sock.fileno()

    def next_seq(self) -> int:
        """A fresh sequence number."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _recv(self, block: bool = True) -> list[RawMessage]:
        try:
            n = self._sock.recv_into(self._buf, RECV_SIZE, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return []
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise XfrmError(
                    "netlink receive buffer overflowed (ENOBUFS): replies were lost; "
                    "dump the state again to see what was applied",
                    errno.ENOBUFS,
                ) from None
            raise
        return list(iter_messages(memoryview(self._buf)[:n]))

    def exchange(self, data: bytes, seq: int, *, dump: bool = False) -> list[RawMessage]:
        """Send one request; return every reply with its sequence number, the last one included.

        The last message is the ack or error (NLMSG_ERROR), or NLMSG_DONE for
        a dump.  Nothing is interpreted: ``transact`` does that.
        """
        self._sock.send(data)
        replies: list[RawMessage] = []
        while True:
            for msg in self._recv():
                if msg.seq != seq:
                    continue  # a late answer to an abandoned request
                replies.append(msg)
                if msg.type == c.NLMSG_ERROR or (dump and msg.type == c.NLMSG_DONE):
                    return replies

    def transact(
        self,
        data: bytes,
        seq: int,
        what: str,
        *,
        dump: bool = False,
        proto: int | None = None,
        algorithms: tuple[str, ...] = (),
    ) -> list[RawMessage]:
        """Send one request; return its replies, raising ``XfrmError`` on a kernel error."""
        replies = self.exchange(data, seq, dump=dump)
        last = replies.pop()
        if last.type == c.NLMSG_ERROR:
            err = parse_error(last)
            if err.error:
                text = describe_errno(
                    -err.error, what, proto=proto, extack=err.extack, algorithms=algorithms
                )
                raise XfrmError(text, -err.error, err.extack)
            return replies
        (status,) = struct.unpack_from("=i", last.data, 16) if len(last.data) >= 20 else (0,)
        if status < 0:
            raise XfrmError(describe_errno(-status, what), -status)
        if any(m.flags & c.NLM_F_DUMP_INTR for m in (*replies, last)):
            raise _DumpInterrupted
        return replies

    def _dump(self, msg_type: int, what: str) -> list[RawMessage]:
        for _ in range(DUMP_RETRIES):
            seq = self.next_seq()
            header = struct.pack("=IHHII", 16, msg_type, c.NLM_F_REQUEST | c.NLM_F_DUMP, seq, 0)
            try:
                return self.transact(header, seq, what, dump=True)
            except _DumpInterrupted:
                continue  # the table changed during the dump: take it again
        raise XfrmError(f"{what} kept changing during {DUMP_RETRIES} dumps; try again", errno.EINTR)

    # -- SAs ------------------------------------------------------------------

    def dump_sad(self) -> list[SadEntry]:
        """Every SA of the namespace, as model entries."""
        raw = self._dump(c.XFRM_MSG_GETSA, "SA dump")
        return [codec.sad_from_bytes(m.data) for m in raw if m.type == c.XFRM_MSG_NEWSA]

    def get_sa(
        self,
        daddr: Address,
        spi: int,
        proto: int = IPPROTO_ESP,
        *,
        mark: Mark | None = None,
    ) -> SadEntry:
        """One SA by (daddr, spi, proto[, mark])."""
        replies = self._sa_request(
            codec.encode_sa_id, c.XFRM_MSG_GETSA, daddr, spi, proto, mark=mark
        )
        for reply in replies:
            if reply.type == c.XFRM_MSG_NEWSA:
                return codec.sad_from_bytes(reply.data)
        raise XfrmError(f"{_sa_id_label(daddr, spi, proto)}: kernel sent no SA", errno.ENOENT)

    def add_sa(self, entry: SadEntry, *, with_lifetime_cur: bool = False) -> None:
        """Install a new SA (XFRM_MSG_NEWSA); EEXIST if it is there.

        ``with_lifetime_cur`` also sends XFRMA_LTIME_VAL so byte/packet
        counters and the add time carry over (lifetimes keep running).
        """
        self._send_entry(
            codec.encode_sa, entry, c.XFRM_MSG_NEWSA, with_lifetime_cur=with_lifetime_cur
        )

    def update_sa(self, entry: SadEntry, *, with_lifetime_cur: bool = False) -> None:
        """Update an SA (XFRM_MSG_UPDSA).

        The kernel takes only lifetimes, encap (same type), coaddr and output
        mark/if_id from it; reqid, keys and replay state stay (``set_ae`` sets
        the replay state).  Updating a larval SA from ``alloc_spi`` completes it.
        """
        self._send_entry(
            codec.encode_sa, entry, c.XFRM_MSG_UPDSA, with_lifetime_cur=with_lifetime_cur
        )

    def _send_entry(self, encoder: Any, entry: Any, msg_type: int, **options: Any) -> None:
        seq = self.next_seq()
        data = encoder(entry, msg_type, c.NLM_F_REQUEST | c.NLM_F_ACK, seq, 0, **options)
        proto, algorithms = _entry_context(entry)
        self.transact(data, seq, entry.label(), proto=proto, algorithms=algorithms)

    def delete_sa(
        self,
        daddr: Address,
        spi: int,
        proto: int = IPPROTO_ESP,
        family: int | None = None,
        mark: Mark | None = None,
    ) -> None:
        """Remove one SA (XFRM_MSG_DELSA)."""
        self._sa_request(
            codec.encode_sa_id, c.XFRM_MSG_DELSA, daddr, spi, proto, family=family, mark=mark
        )

    def _sa_request(
        self,
        encoder: Callable[..., bytes],
        msg_type: int,
        daddr: Address,
        spi: int,
        proto: int,
        *,
        flags: int = c.NLM_F_REQUEST | c.NLM_F_ACK,
        **options: Any,
    ) -> list[RawMessage]:
        """Send one request naming the SA (daddr, spi, proto); its replies, errors naming the SA.

        ``encoder`` is ``codec.encode_sa_id`` or ``codec.encode_ae``.
        """
        seq = self.next_seq()
        data = encoder(msg_type, flags, seq, daddr, spi, proto, **options)
        return self.transact(data, seq, _sa_id_label(daddr, spi, proto))

    def flush_sa(self, proto: int = c.IPSEC_PROTO_ANY) -> None:
        """Remove every SA of ``proto`` (default: all)."""
        seq = self.next_seq()
        self.transact(codec.encode_flush_sa(seq, proto), seq, f"SA flush (proto {proto})")

    # -- replay / lifetime state (AE) -----------------------------------------

    def get_ae(
        self,
        daddr: Address,
        spi: int,
        proto: int = IPPROTO_ESP,
        *,
        mark: Mark | None = None,
        saddr: Address | None = None,
        reqid: int = 0,
    ) -> AeState:
        """Replay counters and current lifetime of a live SA (XFRM_MSG_GETAE)."""
        replies = self._sa_request(
            codec.encode_ae,
            c.XFRM_MSG_GETAE,
            daddr,
            spi,
            proto,
            mark=mark,
            saddr=saddr,
            reqid=reqid,
            ae_flags=c.XFRM_AE_RVAL | c.XFRM_AE_LVAL,
        )
        for reply in replies:
            if reply.type == c.XFRM_MSG_NEWAE:
                return codec.ae_state_from_bytes(reply.data)
        raise XfrmError(f"{_sa_id_label(daddr, spi, proto)}: kernel sent no AE reply", errno.ENOENT)

    def set_ae(
        self,
        daddr: Address,
        spi: int,
        proto: int = IPPROTO_ESP,
        *,
        replay: ReplayState | ReplayStateEsn | None = None,
        lifetime_cur: LifetimeCur | None = None,
        mark: Mark | None = None,
        saddr: Address | None = None,
        reqid: int = 0,
        replay_thresh: int | None = None,
        etimer_thresh: int | None = None,
    ) -> None:
        """Set the replay state and/or current lifetime of a live SA (NEWAE, NLM_F_REPLACE).

        This is how a restored outbound SA continues at the old sequence number:
        XFRM_MSG_UPDSA leaves the replay state alone.
        """
        if all(v is None for v in (replay, lifetime_cur, replay_thresh, etimer_thresh)):
            raise XfrmError("set_ae needs a replay state, a lifetime or a threshold to set")
        self._sa_request(
            codec.encode_ae,
            c.XFRM_MSG_NEWAE,
            daddr,
            spi,
            proto,
            flags=c.NLM_F_REQUEST | c.NLM_F_ACK | c.NLM_F_REPLACE,
            replay=replay,
            lifetime_cur=lifetime_cur,
            mark=mark,
            saddr=saddr,
            reqid=reqid,
            replay_thresh=replay_thresh,
            etimer_thresh=etimer_thresh,
        )

    def set_replay(self, entry: SadEntry, replay: ReplayState | ReplayStateEsn) -> None:
        """``set_ae`` for the SA an entry names."""
        self.set_ae(entry.daddr, entry.spi, entry.proto, replay=replay, mark=entry.mark)

    # -- SPI allocation ---------------------------------------------------------

    def alloc_spi(
        self,
        daddr: Address,
        proto: int = IPPROTO_ESP,
        spi_min: int = 0x100,
        spi_max: int = 0xFFFFFFFF,
        *,
        saddr: Address | None = None,
        mode: int = c.XFRM_MODE_TUNNEL,
        reqid: int = 0,
        seq: int = 0,
        mark: Mark | None = None,
        if_id: int | None = None,
    ) -> int:
        """Reserve an SPI in [spi_min, spi_max] (XFRM_MSG_ALLOCSPI); returns it.

        The kernel creates a larval SA holding the SPI; complete it with
        ``update_sa`` or remove it with ``delete_sa``.
        """
        if not 0 < spi_min <= spi_max <= 0xFFFFFFFF:
            raise XfrmError(f"invalid SPI range 0x{spi_min:x}-0x{spi_max:x}", errno.EINVAL)
        request_seq = self.next_seq()
        data = codec.encode_alloc_spi(
            request_seq,
            daddr,
            proto,
            spi_min,
            spi_max,
            saddr=saddr,
            mode=mode,
            reqid=reqid,
            sa_seq=seq,
            mark=mark,
            if_id=if_id,
        )
        what = f"SPI allocation for dst {daddr} proto {proto} in 0x{spi_min:x}-0x{spi_max:x}"
        try:
            replies = self.transact(data, request_seq, what, proto=proto)
        except XfrmError as exc:
            if exc.errno != errno.ENOENT:
                raise
            # The kernel probes the range at random, as many times as it is wide,
            # and answers ENOENT when every probe hit a taken SPI.
            raise XfrmError(
                f"{what}: no free SPI found (the range is full, or too small for the "
                "kernel's random probing)",
                errno.ENOENT,
                exc.extack,
            ) from None
        for reply in replies:
            if reply.type == c.XFRM_MSG_NEWSA:
                return codec.sad_from_bytes(reply.data).spi
        raise XfrmError(f"{what}: kernel sent no SA", errno.ENOENT)

    # -- policies -------------------------------------------------------------

    def dump_spd(self, *, per_socket: bool = False) -> list[SpdEntry]:
        """Every policy (main and sub) but the per-socket ones, as model entries.

        This is the SPD that ipsec-ha serves: the daemon, the executor,
        snapshots and restores all read it here. Per-socket policies (an IKE
        daemon's bypass for its own sockets) belong to their socket, and the
        kernel refuses to add or delete them, so they are left out before
        decoding (``appliance.xfrm.per_socket``); ``per_socket`` keeps them
        (direction 3 or 4), for diagnostics.
        """
        raw = self._dump(c.XFRM_MSG_GETPOLICY, "policy dump")
        return [
            codec.spd_from_bytes(m.data)
            for m in raw
            if m.type == c.XFRM_MSG_NEWPOLICY and (per_socket or not is_per_socket_message(m.data))
        ]

    def add_policy(self, entry: SpdEntry) -> None:
        """Install a new policy (XFRM_MSG_NEWPOLICY); EEXIST if one with its selector exists."""
        self._send_entry(codec.encode_policy, entry, c.XFRM_MSG_NEWPOLICY)

    def update_policy(self, entry: SpdEntry) -> None:
        """Create or replace a policy (XFRM_MSG_UPDPOLICY)."""
        self._send_entry(codec.encode_policy, entry, c.XFRM_MSG_UPDPOLICY)

    def delete_policy(
        self,
        selector: Selector,
        dir: int,
        *,
        index: int = 0,
        mark: Mark | None = None,
        if_id: int | None = None,
        ptype: int = c.XFRM_POLICY_TYPE_MAIN,
    ) -> None:
        """Remove a policy by selector and direction (or by ``index`` when not 0)."""
        seq = self.next_seq()
        data = codec.encode_policy_id(
            c.XFRM_MSG_DELPOLICY,
            c.NLM_F_REQUEST | c.NLM_F_ACK,
            seq,
            selector,
            dir,
            index=index,
            mark=mark,
            if_id=if_id,
            ptype=ptype,
        )
        what = (
            f"policy {_DIR_NAMES.get(dir, str(dir))} src {selector.saddr}/{selector.prefixlen_s} "
            f"dst {selector.daddr}/{selector.prefixlen_d}"
        )
        self.transact(data, seq, what)

    def delete_policy_entry(self, entry: SpdEntry) -> None:
        """Remove the policy an entry describes (by selector, direction, mark, if_id, type)."""
        self.delete_policy(
            entry.selector,
            entry.dir,
            mark=entry.mark,
            if_id=entry.if_id,
            ptype=entry.ptype,
        )

    def flush_policy(self, ptype: int | None = None) -> None:
        """Remove every policy (of ``ptype`` when given; else main policies)."""
        seq = self.next_seq()
        self.transact(codec.encode_flush_policy(seq, ptype), seq, "policy flush")

    # -- migrate ----------------------------------------------------------------

    def migrate(
        self,
        selector: Selector,
        dir: int,
        migrations: Sequence[Migration],
        *,
        kmaddress: KmAddress | None = None,
        ptype: int = c.XFRM_POLICY_TYPE_MAIN,
    ) -> None:
        """Move a policy's templates and SAs to new endpoints (XFRM_MSG_MIGRATE)."""
        if not migrations:
            raise XfrmError("migrate needs at least one migration")
        seq = self.next_seq()
        data = codec_migrate.encode_migrate(
            seq, selector, dir, migrations, kmaddress=kmaddress, ptype=ptype
        )
        first = migrations[0]
        what = (
            f"migration of policy {_DIR_NAMES.get(dir, str(dir))} "
            f"from {first.old_saddr}->{first.old_daddr} to {first.new_saddr}->{first.new_daddr}"
        )
        self.transact(data, seq, what)

    # -- batches ----------------------------------------------------------------

    def install_batch(
        self,
        operations: Sequence[tuple[str, SadEntry | SpdEntry]],
        *,
        with_lifetime_cur: bool = False,
    ) -> list[BatchFailure]:
        """Apply many changes without waiting for each answer; report each failure.

        ``operations`` holds ``(op, entry)`` with op one of ``add_sa``,
        ``update_sa``, ``add_policy``, ``update_policy``, ``delete_sa``,
        ``delete_policy``, ``set_replay`` (NEWAE with replace: the entry's
        replay state onto the live SA) and ``set_thresholds`` (NEWAE: the
        entry's ``replay_thresh`` and ``etimer_thresh``).  Requests go out in
        sendmsg buffers of up to ``BATCH_CHUNK`` bytes without NLM_F_ACK, so the
        kernel answers only failures.  The result lists every refused entry as
        (index, errno, message), in order.
        """
        check_batch(operations)  # bad input fails here, before anything is sent
        failures: dict[int, BatchFailure] = {}

        def encode(index: int, seq: int) -> bytes:
            op, entry = operations[index]
            return encode_operation(op, entry, seq, with_lifetime_cur=with_lifetime_cur)

        def answer(index: int, msg: RawMessage) -> None:
            if msg.type != c.NLMSG_ERROR:
                return
            err = parse_error(msg)
            if err.error:
                op, entry = operations[index]
                proto, algorithms = _entry_context(entry)
                text = describe_errno(
                    -err.error, entry.label(), proto=proto, extack=err.extack, algorithms=algorithms
                )
                failures[index] = BatchFailure(index, -err.error, f"{op}: {text}")

        self._pipeline(len(operations), encode, answer)
        return [failures[i] for i in sorted(failures)]

    def get_ae_batch(self, entries: Sequence[SadEntry]) -> list[AeState | BatchFailure]:
        """GETAE for many SAs without waiting for each answer, in the order given.

        Each result is the SA's ``AeState``, or a ``BatchFailure`` (index,
        errno, message) when the kernel refused, e.g. ESRCH for an SA gone.
        """
        results: list[AeState | BatchFailure | None] = [None] * len(entries)

        def encode(index: int, seq: int) -> bytes:
            sa = entries[index]
            return codec.encode_ae(
                c.XFRM_MSG_GETAE,
                c.NLM_F_REQUEST,
                seq,
                sa.daddr,
                sa.spi,
                sa.proto,
                mark=sa.mark,
                ae_flags=c.XFRM_AE_RVAL | c.XFRM_AE_LVAL,
            )

        def answer(index: int, msg: RawMessage) -> None:
            if msg.type == c.XFRM_MSG_NEWAE:
                results[index] = codec.ae_state_from_bytes(msg.data)
            elif msg.type == c.NLMSG_ERROR:
                err = parse_error(msg)
                if err.error:
                    sa = entries[index]
                    text = describe_errno(-err.error, sa.label(), extack=err.extack)
                    results[index] = BatchFailure(index, -err.error, f"get_ae: {text}")

        # Every GETAE is answered, and the kernel queues a whole sendmsg's answers
        # before we read: size the buffers to the receive buffer (~1 KiB per answer
        # with its overhead, x4 for ESN bitmaps), not to BATCH_CHUNK alone.
        try:
            rcvbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except AttributeError:  # a test double
            rcvbuf = DEFAULT_RCVBUF
        self._pipeline(len(entries), encode, answer, per_buffer=max(16, rcvbuf // 4096))
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise XfrmError(
                f"GETAE batch: no answer for {len(missing)} of {len(entries)} SAs "
                f"(first {entries[missing[0]].label()})",
                errno.EIO,
            )
        return [r for r in results if r is not None]

    def _pipeline(
        self,
        count: int,
        encode: Callable[[int, int], bytes],
        answer: Callable[[int, RawMessage], None],
        *,
        per_buffer: int | None = None,
    ) -> None:
        """Send ``count`` requests (``encode(index, seq)``) in big buffers; pass on each answer.

        ``per_buffer`` caps the requests per sendmsg (for requests that are all
        answered); the size cap is ``BATCH_CHUNK`` or half the send buffer.

        Request ``i`` gets sequence number ``base + i``; every message the
        kernel sends back for it goes to ``answer(i, msg)``.  A final
        NLMSG_NOOP with NLM_F_ACK marks the end: the kernel handles one
        socket's requests in order, so its ack comes after every other answer.
        """
        base = self._seq + 1
        self._seq = (self._seq + count) & 0xFFFFFFFF
        barrier = self.next_seq()
        finished = threading.Event()

        def drain(block: bool) -> None:
            """Read what is queued (after one blocking read if ``block``); pass it on."""
            while messages := self._recv(block):
                block = False
                for msg in messages:
                    seq = parse_error(msg).request_seq if msg.type == c.NLMSG_ERROR else msg.seq
                    if seq == barrier:
                        finished.set()
                        continue
                    index = (seq - base) & 0xFFFFFFFF
                    if index < count:
                        answer(index, msg)

        try:
            # The kernel refuses a sendmsg larger than the send buffer (EMSGSIZE).
            limit = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2
        except AttributeError:  # a test double
            limit = BATCH_CHUNK
        limit = max(1 << 16, min(BATCH_CHUNK, limit))

        # The kernel applies a buffer inside sendmsg(), which releases the GIL:
        # a sender thread lets the next chunk be encoded meanwhile.
        chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        sender_errors: list[BaseException] = []

        def sender() -> None:
            try:
                while (data := chunks.get()) is not None:
                    self._sock.send(data)
                    drain(False)  # keep the receive queue short
            except BaseException as exc:  # re-raised in the caller's thread
                sender_errors.append(exc)
                while chunks.get() is not None:
                    pass

        thread = threading.Thread(target=sender, name="xfrm-batch-sender", daemon=True)
        thread.start()
        try:
            ending = struct.pack(
                "=IHHII", 16, c.NLMSG_NOOP, c.NLM_F_REQUEST | c.NLM_F_ACK, barrier, 0
            )
            requests = (encode(i, (base + i) & 0xFFFFFFFF) for i in range(count))
            for chunk in _chunks(requests, limit, ending, per_buffer):
                chunks.put(chunk)
        finally:
            chunks.put(None)
            thread.join()
        if sender_errors:
            raise sender_errors[0]
        while not finished.is_set():
            drain(True)


class _DumpInterrupted(Exception):
    pass


_BATCH_TYPES = {
    "add_sa": c.XFRM_MSG_NEWSA,
    "update_sa": c.XFRM_MSG_UPDSA,
    "add_policy": c.XFRM_MSG_NEWPOLICY,
    "update_policy": c.XFRM_MSG_UPDPOLICY,
    "delete_sa": c.XFRM_MSG_DELSA,
    "delete_policy": c.XFRM_MSG_DELPOLICY,
    "set_replay": c.XFRM_MSG_NEWAE,
    "set_thresholds": c.XFRM_MSG_NEWAE,
}


def check_batch(operations: Sequence[tuple[str, SadEntry | SpdEntry]]) -> None:
    """Raise ``XfrmError`` naming the first entry whose operation or type is wrong."""
    for index, item in enumerate(operations):
        if not isinstance(item, tuple) or len(item) != 2:
            raise XfrmError(f"batch entry {index}: expected (operation, entry), got {item!r}")
        op, entry = item
        if op not in _BATCH_TYPES:
            raise XfrmError(
                f"batch entry {index}: unknown operation {op!r} (one of {', '.join(_BATCH_TYPES)})"
            )
        wanted = SpdEntry if op.endswith("_policy") else SadEntry
        if not isinstance(entry, wanted):
            article = "a" if wanted is SadEntry else "an"
            raise XfrmError(f"batch entry {index}: {op} needs {article} {wanted.__name__}")
        if isinstance(entry, SadEntry):
            if op == "set_replay" and entry.replay is None and entry.replay_esn is None:
                raise XfrmError(f"batch entry {index}: set_replay needs an SA with a replay state")
            if (
                op == "set_thresholds"
                and entry.replay_thresh is None
                and entry.etimer_thresh is None
            ):
                raise XfrmError(f"batch entry {index}: set_thresholds needs an SA with a threshold")


def encode_operation(
    op: str, entry: SadEntry | SpdEntry, seq: int, *, with_lifetime_cur: bool = False
) -> bytes:
    """One batch request, without NLM_F_ACK (the kernel then answers only on failure)."""
    msg_type = _BATCH_TYPES[op]
    flags = c.NLM_F_REQUEST
    if isinstance(entry, SpdEntry):
        if op == "delete_policy":
            return codec.encode_policy_id(
                msg_type,
                flags,
                seq,
                entry.selector,
                entry.dir,
                mark=entry.mark,
                if_id=entry.if_id,
                ptype=entry.ptype,
            )
        return codec.encode_policy(entry, msg_type, flags, seq)
    if op == "delete_sa":
        return codec.encode_sa_id(
            msg_type,
            flags,
            seq,
            entry.daddr,
            entry.spi,
            entry.proto,
            family=entry.family,
            mark=entry.mark,
        )
    if op == "set_replay":
        return codec.encode_ae(
            msg_type,
            flags | c.NLM_F_REPLACE,
            seq,
            entry.daddr,
            entry.spi,
            entry.proto,
            replay=entry.replay_esn if entry.replay_esn is not None else entry.replay,
            mark=entry.mark,
        )
    if op == "set_thresholds":
        return codec.encode_ae(
            msg_type,
            flags | c.NLM_F_REPLACE,  # xfrm_new_ae refuses NEWAE without it (EINVAL)
            seq,
            entry.daddr,
            entry.spi,
            entry.proto,
            mark=entry.mark,
            replay_thresh=entry.replay_thresh,
            etimer_thresh=entry.etimer_thresh,
        )
    return codec.encode_sa(entry, msg_type, flags, seq, 0, with_lifetime_cur=with_lifetime_cur)


def _chunks(
    requests: Iterable[bytes], limit: int, ending: bytes, per_buffer: int | None = None
) -> Iterator[bytes]:
    """sendmsg buffers of at most ``limit`` bytes and ``per_buffer`` requests.

    One oversized request goes alone; ``ending`` closes the last buffer.
    """
    chunk: list[bytes] = []
    size = 0
    for data in requests:
        full = per_buffer is not None and len(chunk) >= per_buffer
        if chunk and (full or size + len(data) > limit):
            yield b"".join(chunk)
            chunk, size = [], 0
        chunk.append(data)
        size += len(data)
    chunk.append(ending)
    yield b"".join(chunk)


def dump_sad(netns: str | None = None) -> list[SadEntry]:
    """Every SA of a namespace as model entries (opens and closes a socket)."""
    with XfrmSocket(netns) as xs:
        return xs.dump_sad()


def dump_spd(netns: str | None = None) -> list[SpdEntry]:
    """Every policy of a namespace but the per-socket ones, as model entries (opens a socket)."""
    with XfrmSocket(netns) as xs:
        return xs.dump_spd()

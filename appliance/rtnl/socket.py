"""The thin adapter: dump the addresses of a namespace over a NETLINK_ROUTE socket.

All encoding and decoding is in :mod:`appliance.rtnl.codec`; this module
opens the socket inside ``netns`` (through :func:`appliance.netns.run_in_netns`,
so the caller's thread never moves), sends the dump request and reads until
the kernel says it is done.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket

from appliance.errors import KernelError
from appliance.netns import run_in_netns
from appliance.rtnl import codec

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

NETLINK_ROUTE = 0
RECV_SIZE = 1 << 16
TIMEOUT_S = 5.0
"""The kernel answers a dump at once; a silent socket means something is badly wrong."""
DUMP_ATTEMPTS = 3
"""A dump the kernel marks interrupted (addresses changed meanwhile) is taken again."""


def local_addresses(netns: str | None) -> list[Address]:
    """The addresses configured on the interfaces of ``netns`` (``None``: the caller's)."""
    return run_in_netns(netns, lambda: _dump(netns))


def _dump(netns: str | None) -> list[Address]:
    where = f" in network namespace {netns!r}" if netns else ""
    try:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE
        )
    except OSError as exc:
        raise KernelError(f"cannot open a route netlink socket{where}: {exc.strerror}") from None
    try:
        sock.settimeout(TIMEOUT_S)
        sock.bind((0, 0))
        for attempt in range(1, DUMP_ATTEMPTS + 1):
            found, interrupted = _one_dump(sock, attempt, where)
            if not interrupted:
                return found
        raise KernelError(
            f"the address list{where} kept changing during {DUMP_ATTEMPTS} dumps (NLM_F_DUMP_INTR)"
        )
    except TimeoutError:
        raise KernelError(f"the kernel did not answer the address dump{where}") from None
    except OSError as exc:
        raise KernelError(f"address dump{where} failed: {exc.strerror}") from None
    finally:
        sock.close()


def _one_dump(sock: socket.socket, seq: int, where: str) -> tuple[list[Address], bool]:
    sock.send(codec.encode_getaddr_dump(seq))
    found: list[Address] = []
    interrupted = False
    while True:
        try:
            events = codec.decode(sock.recv(RECV_SIZE))
        except ValueError as exc:
            raise KernelError(f"malformed address dump from the kernel{where}: {exc}") from None
        for event in events:
            if isinstance(event, codec.InterfaceAddress):
                found.append(event.local)
                interrupted |= event.interrupted
                continue
            if event.seq != seq:
                continue  # an answer to an earlier request on this socket
            if event.error:
                err = -event.error
                name = errno.errorcode.get(err, str(err))
                raise KernelError(
                    f"kernel refused the address dump{where}: {name} ({os.strerror(err)})"
                )
            return found, interrupted or event.interrupted

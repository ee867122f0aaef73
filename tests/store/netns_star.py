"""A star of network namespaces joined by a bridge, for store tests; always removed.

``with netns_star({"srv": "192.0.2.1", "cli": "192.0.2.2"}) as ns:`` gives the
real namespace names (``iha-<random>-srv`` ...).  The bridge lives in its own
hub namespace, so nothing touches the root namespace.  ``in_netns`` runs a
function in a thread that has joined a namespace (its sockets live there).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

_T = TypeVar("_T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True)


@contextlib.contextmanager
def netns_star(nodes: dict[str, str], prefixlen: int = 24) -> Iterator[dict[str, str]]:
    tag = f"iha-{secrets.token_hex(3)}-"
    hub = tag + "hub"
    names = {node: tag + node for node in nodes}
    created: list[str] = []
    try:
        for ns in (hub, *names.values()):
            ip("netns", "add", ns)
            created.append(ns)
            ip("link", "set", "lo", "up", netns=ns)
        ip("link", "add", "sw0", "type", "bridge", netns=hub)
        ip("link", "set", "sw0", "up", netns=hub)
        for i, (node, addr) in enumerate(nodes.items()):
            ns = names[node]
            ip(
                "link",
                "add",
                f"p{i}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
                netns=hub,
            )
            ip("link", "set", f"p{i}", "master", "sw0", "up", netns=hub)
            ip("addr", "add", f"{addr}/{prefixlen}", "dev", "eth0", netns=ns)
            ip("link", "set", "eth0", "up", netns=ns)
        yield names
    finally:
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def in_netns(netns: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run ``fn`` in a new thread that joined ``netns``; return its result or raise its error."""
    result: list[Any] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            result.append(fn(*args, **kwargs))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name=f"in-{netns}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]  # type: ignore[no-any-return]

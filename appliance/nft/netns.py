"""Run a function inside a named network namespace, without moving the caller.

libnftables talks netlink through a socket that belongs to the network
namespace of the thread that opened it.  ``setns(2)`` with ``CLONE_NEWNET``
moves only the calling thread, so the work runs in a fresh worker thread
that enters the namespace, does the job and returns to where it started;
the calling thread never changes namespace, whatever goes wrong.

A short-lived child process would isolate just as well, but results,
exceptions and sockets would have to be pickled or passed over a pipe; a
thread hands back any Python object, including a socket opened inside the
namespace (it stays bound to that namespace).  ``os.setns`` appears only in
Python 3.12, hence ``ctypes``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from appliance.errors import KernelError, UsageError

T = TypeVar("T")

NETNS_RUN_DIR = "/run/netns"
"""Where ``ip netns add`` binds named namespaces."""

CLONE_NEWNET = 0x40000000


def netns_path(netns: str) -> str:
    """Return the bind-mount path of a namespace named like ``ip netns`` names it."""
    if not netns or "/" in netns or netns in (".", "..") or "\0" in netns:
        raise UsageError(f"{netns!r} is not a network namespace name")
    return os.path.join(NETNS_RUN_DIR, netns)


def run_in_netns(netns: str | None, work: Callable[[], T]) -> T:
    """Return ``work()`` run inside ``netns`` (``None``: the caller's own namespace)."""
    if netns is None:
        return work()
    path = netns_path(netns)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KernelError(f"network namespace {netns!r} does not exist ({path})") from None
    except OSError as exc:
        raise KernelError(f"cannot open network namespace {netns!r}: {exc.strerror}") from None
    results: list[T] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            errors.append(KernelError(f"cannot open this thread's namespace: {exc.strerror}"))
            return
        try:
            _setns(target, netns)
            try:
                results.append(work())
            except BaseException as exc:
                errors.append(exc)
            finally:
                # The thread ends right after; going home anyway keeps the invariant simple.
                _setns(home, "the original")
        except BaseException as exc:
            errors.append(exc)
        finally:
            os.close(home)

    thread = threading.Thread(target=worker, name=f"netns:{netns}", daemon=True)
    try:
        thread.start()
        thread.join()
    finally:
        os.close(target)
    if errors:
        # The work's own error first: a failure to go home matters less (the thread is gone).
        raise errors[0]
    return results[0]


def _setns(fd: int, name: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise KernelError(f"cannot enter network namespace {name!r}: {os.strerror(errno)}")


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

"""Named network namespaces: the naming rule, running work inside one, making one.

Every part of the appliance that touches another namespace comes through
here, so a name means the same thing everywhere and the process's threads
never wander.

Names follow ``ip netns``: the namespace ``NAME`` is the bind mount
``/run/netns/NAME``.  A name that cannot be such a file is the caller's
mistake (:class:`UsageError`); a well-formed name with no namespace behind
it is the machine's state (:class:`KernelError`).

``setns(2)`` with ``CLONE_NEWNET`` moves only the calling thread, so
:func:`run_in_netns` does the work in a fresh worker thread that enters the
namespace, runs it and goes home; the calling thread never changes
namespace, whatever goes wrong.  A netlink or UDP socket opened by the work
stays bound to the namespace it was opened in for its whole life, so
``run_in_netns(netns, lambda: socket.socket(...))`` hands the caller a
socket in ``netns``.  A short-lived child process would isolate as well, but
results, exceptions and sockets would have to cross a pipe; a thread hands
back any Python object.  ``os.setns`` appears only in Python 3.12, hence
``ctypes``.

Creating and removing a namespace (``ip netns add``/``del``) needs a mount
of the new namespace's file, which pyroute2's ``netns`` module does; it is
imported only when a namespace is made, since its import is slow.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from appliance.errors import KernelError, UsageError

T = TypeVar("T")

NETNS_RUN_DIR = "/run/netns"
"""Where ``ip netns add`` binds named namespaces."""

NAMESPACE_PREFIX = "iha-"
"""Every namespace the appliance or its tests make starts with this, so leftovers are seen."""

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


# --- making and removing namespaces (ip netns add / del) ---------------------------------


def create_netns(netns: str) -> None:
    """Create the empty namespace ``netns``, as ``ip netns add`` does."""
    path = netns_path(netns)
    from pyroute2 import netns as pyroute2_netns

    try:
        pyroute2_netns.create(netns)
    except FileExistsError:
        raise KernelError(f"network namespace {netns!r} already exists ({path})") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise KernelError(f"cannot create network namespace {netns!r}: {reason}") from None


def remove_netns(netns: str) -> None:
    """Remove the namespace ``netns``, as ``ip netns del`` does.

    The namespace itself lives on while a process or socket still holds it.
    """
    path = netns_path(netns)
    from pyroute2 import netns as pyroute2_netns

    try:
        pyroute2_netns.remove(netns)
    except FileNotFoundError:
        raise KernelError(f"network namespace {netns!r} does not exist ({path})") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise KernelError(f"cannot remove network namespace {netns!r}: {reason}") from None


def create_unique_netns(purpose: str) -> str:
    """Create an empty namespace ``iha-<random>-<purpose>`` and return its name."""
    name = f"{NAMESPACE_PREFIX}{secrets.token_hex(4)}-{purpose}"
    create_netns(name)
    return name


@contextlib.contextmanager
def temporary_netns(purpose: str) -> Iterator[str]:
    """Create ``iha-<random>-<purpose>``, yield its name, and always remove it."""
    name = create_unique_netns(purpose)
    try:
        yield name
    finally:
        remove_netns(name)

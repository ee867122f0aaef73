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
namespace, whatever goes wrong.  Work repeated often (a metrics scrape a
second) goes to a :class:`NetnsWorker` instead: one long-lived thread that
entered the namespace once and runs nothing but the work handed to it, so
no thread is started per call.  A netlink or UDP socket opened by the work
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
import queue
import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from appliance.errors import KernelError, UsageError

T = TypeVar("T")

NETNS_RUN_DIR = "/run/netns"
"""Where ``ip netns add`` binds named namespaces."""

NAMESPACE_PREFIX = "iha-"
"""Every namespace the appliance or its tests make starts with this, so leftovers are seen."""

CLONE_NEWNET = 0x40000000
PR_SET_NAME = 15
COMM_LENGTH = 15
"""The bytes of a thread's name the kernel keeps (``/proc/.../comm``)."""
WORKER_CLOSE_TIMEOUT_S = 5.0
"""How long ``NetnsWorker.close`` waits for the work in hand to end."""


def netns_path(netns: str) -> str:
    """Return the bind-mount path of a namespace named like ``ip netns`` names it."""
    if not netns or "/" in netns or netns in (".", "..") or "\0" in netns:
        raise UsageError(f"{netns!r} is not a network namespace name")
    return os.path.join(NETNS_RUN_DIR, netns)


def run_in_netns(netns: str | None, work: Callable[[], T]) -> T:
    """Return ``work()`` run inside ``netns`` (``None``: the caller's own namespace)."""
    if netns is None:
        return work()
    target = _open_netns(netns)
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


class NetnsWorker:
    """One long-lived thread inside ``netns`` that runs the work handed to it, one at a time.

    The thread enters the namespace once, when the worker is made, and stays
    there until :meth:`close`; :meth:`run` hands it a callable and returns
    its result or raises its exception in the caller's thread, which never
    moves.  Whatever the work opens there (a netlink socket, a libnftables
    context) stays in that one thread and namespace.  ``None``: the
    namespace of the thread that makes the worker.  ``name`` names the
    thread in Python and in /proc (whose comm keeps its first 15 bytes), so
    that ``top -H`` and a bench can find it.  ``KernelError`` when the
    namespace cannot be entered.
    """

    def __init__(self, netns: str | None, name: str) -> None:
        self.netns = netns
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None]
        self._jobs = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        target = None if netns is None else _open_netns(netns)
        self._identity = None if target is None else _identity(os.fstat(target))
        entered: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._serve, args=(target, entered), name=name, daemon=True
        )
        try:
            self._thread.start()
            try:
                entered.result()
            except BaseException:
                self._thread.join()  # it ends at once: it never entered
                raise
        finally:
            if target is not None:
                os.close(target)

    @property
    def native_id(self) -> int | None:
        """The thread's kernel TID (its CPU time is in /proc/self/task/TID/stat)."""
        return self._thread.native_id

    def is_current(self) -> bool:
        """Whether ``netns`` still names the namespace the worker is in.

        False once it was removed (``ip netns del``: the worker's thread keeps
        the namespace itself alive), or removed and made anew.
        """
        if self.netns is None:
            return True
        try:
            return _identity(os.stat(netns_path(self.netns))) == self._identity
        except OSError:
            return False

    def run(self, work: Callable[[], T]) -> T:
        """Return ``work()`` run in the worker's thread, inside its namespace."""
        if threading.current_thread() is self._thread:
            return work()  # work that hands more work in: queueing it would wait forever
        done: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise ValueError(f"the namespace worker {self.name!r} is closed")
            self._jobs.put((work, done))
        return done.result()

    def close(self) -> None:
        """Stop the thread once the work handed in before has run (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=WORKER_CLOSE_TIMEOUT_S)

    def __enter__(self) -> NetnsWorker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _serve(self, target: int | None, entered: Future[None]) -> None:
        name_this_thread(self.name)
        try:
            if target is not None:
                _setns(target, str(self.netns))
        except BaseException as exc:
            entered.set_exception(exc)
            return
        entered.set_result(None)
        # It never goes home: it runs nothing but the work handed to it, and ends here.
        while (job := self._jobs.get()) is not None:
            work, done = job
            try:
                done.set_result(work())
            except BaseException as exc:
                done.set_exception(exc)


def name_this_thread(name: str) -> None:
    """Name the calling thread in /proc too (its first 15 bytes): Python before 3.14 names
    only its own thread object, and ``top -H`` and the benches read /proc."""
    _libc.prctl(PR_SET_NAME, name.encode()[:COMM_LENGTH], 0, 0, 0)


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _open_netns(netns: str) -> int:
    path = netns_path(netns)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KernelError(f"network namespace {netns!r} does not exist ({path})") from None
    except OSError as exc:
        raise KernelError(f"cannot open network namespace {netns!r}: {exc.strerror}") from None


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

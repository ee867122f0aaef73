"""The local charon's vici socket, through strongSwan's own ``vici`` package (adapter).

Only what the check after a takeover needs (``safety_net``): ``list-sas``,
``list-conns`` and ``initiate``.  Each call opens its own session, in the
daemon's network namespace, with a timeout on every read, so that a charon
that hangs costs a logged error and never a stuck daemon.

Addresses are written as charon's ``charon.plugins.vici.socket`` is:
``unix:///var/run/charon.vici`` (charon's default) or ``tcp://127.0.0.1:4502``.
vici has no authentication: whoever reaches it controls charon, so a TCP
address must be a loopback one.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

import vici  # strongSwan's vici client (pip: vici)
from vici.exception import CommandException, SessionException

from appliance.errors import ApplianceError, ConfigError
from appliance.netns import run_in_netns
from appliance.strongswan.safety_net import (
    Connection,
    HeldIkeSa,
    SafetyNetError,
    parse_list_conns,
    parse_list_sas,
)

DEFAULT_VICI = "unix:///var/run/charon.vici"
"""charon's own default (``charon.plugins.vici.socket``)."""
VICI_TIMEOUT_S = 10.0
"""How long a vici read may wait for charon."""

T = TypeVar("T")


@dataclass(frozen=True)
class ViciAddress:
    """Where charon's vici listens: a unix socket path, or a loopback TCP address."""

    path: str | None = None
    host: str | None = None
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> ViciAddress:
        """``unix://PATH`` or ``tcp://ADDRESS:PORT`` (ConfigError names what is wrong)."""
        if text.startswith("unix://"):
            path = text[len("unix://") :]
            if not path.startswith("/"):
                raise ConfigError(f"vici socket {text!r}: unix:// takes an absolute path")
            return cls(path=path)
        if text.startswith("tcp://"):
            host, sep, port = text[len("tcp://") :].rpartition(":")
            host = host.strip("[]")
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not sep or not loopback:
                raise ConfigError(
                    f"vici socket {text!r}: tcp:// takes a loopback address and a port "
                    "(vici has no authentication)"
                )
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"vici socket {text!r}: the port must be 1 to 65535")
            return cls(host=host, port=int(port))
        raise ConfigError(f"vici socket {text!r}: write unix:///path or tcp://127.0.0.1:port")

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix://{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


class _TimedSocket:
    """``sock`` with its timeout on every read: the vici package clears the timeout once a
    frame's first bytes came (``settimeout(None)``), so a charon that stalls mid-frame
    would block the reader for good."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def settimeout(self, value: float | None) -> None:
        if value is not None:
            self._sock.settimeout(value)

    def gettimeout(self) -> float | None:
        return self._sock.gettimeout()

    def recv(self, size: int) -> bytes:
        return self._sock.recv(size)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()


class CharonVici:
    """One charon's vici, reached from ``netns`` (None: the daemon's own namespace)."""

    def __init__(
        self, address: ViciAddress, netns: str | None = None, timeout_s: float = VICI_TIMEOUT_S
    ) -> None:
        self.address = address
        self.netns = netns
        self.timeout_s = timeout_s

    def _connect(self, timeout_s: float) -> socket.socket:
        a = self.address
        if a.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = a.path
        else:
            assert a.host is not None
            family = socket.AF_INET6 if ":" in a.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            target = (a.host, a.port)
        sock.settimeout(timeout_s)
        try:
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        return sock

    def _call(self, what: str, call: Callable[[Any], T], timeout_s: float | None = None) -> T:
        wait = self.timeout_s if timeout_s is None else timeout_s
        try:
            sock = run_in_netns(self.netns, lambda: self._connect(wait))
        except OSError as exc:
            reason = exc.strerror or exc
            raise SafetyNetError(f"charon's vici at {self.address}: {reason}") from None
        except ApplianceError as exc:  # the namespace is gone
            raise SafetyNetError(f"charon's vici at {self.address}: {exc}") from None
        try:
            return call(vici.Session(_TimedSocket(sock)))
        except SafetyNetError:
            raise
        except (OSError, SessionException, CommandException) as exc:
            raise SafetyNetError(f"vici {what} at {self.address}: {exc}") from None
        except Exception as exc:  # the package parses charon's bytes: any error is theirs
            raise SafetyNetError(
                f"vici {what} at {self.address}: unreadable answer ({type(exc).__name__}: {exc})"
            ) from None
        finally:
            sock.close()

    def list_sas(self) -> list[HeldIkeSa]:
        return self._call("list-sas", lambda s: parse_list_sas(list(s.list_sas())))

    def list_conns(self) -> list[Connection]:
        return self._call("list-conns", lambda s: parse_list_conns(list(s.list_conns())))

    def initiate(self, connection: str, child: str | None, timeout_ms: int) -> None:
        """Set ``child`` of ``connection`` up (its IKE SA too, if charon holds none); returns
        once charon says it is up, raises :class:`SafetyNetError` with charon's reason."""
        request = {"ike": connection, "timeout": str(timeout_ms)}
        if child is not None:
            request["child"] = child
        # The control-log events say how the exchange went; charon's errmsg says enough.
        # charon answers within timeout_ms; its log lines may come seconds apart till then.
        self._call("initiate", lambda s: [None for _ in s.initiate(request)],
                   timeout_s=self.timeout_s + timeout_ms / 1000)  # fmt: skip


def wait_for_connections(
    charon: CharonVici,
    names: Collection[str],
    timeout_s: float,
    keep_waiting: Callable[[], bool] = lambda: True,
    poll_s: float = 0.5,
) -> bool:
    """Wait until ``charon`` has every connection of ``names`` loaded (True), or
    ``timeout_s`` passed or ``keep_waiting()`` is False (False).  A charon that does not
    answer yet is asked again."""
    deadline = time.monotonic() + timeout_s
    while keep_waiting():
        try:
            loaded = {c.name for c in charon.list_conns()}
        except SafetyNetError:
            loaded = set()
        if set(names) <= loaded:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return False

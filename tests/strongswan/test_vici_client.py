"""The vici adapter (strongswan.vici_client): addresses, and the package's session against
a stand-in for charon's vici socket that answers with the vici wire format."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vici.protocol import FiniteStream, Message

from appliance.errors import ConfigError
from appliance.strongswan.safety_net import SafetyNetError
from appliance.strongswan.vici_client import CharonVici, ViciAddress, wait_for_connections

pytestmark = pytest.mark.unit

CMD_REQUEST, CMD_RESPONSE, EVENT_REGISTER, EVENT_UNREGISTER, EVENT_CONFIRM, EVENT = 0, 1, 3, 4, 5, 7


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("unix:///var/run/charon.vici", "unix:///var/run/charon.vici"),
        ("tcp://127.0.0.1:4502", "tcp://127.0.0.1:4502"),
        ("tcp://[::1]:4502", "tcp://[::1]:4502"),
    ],
)
def test_addresses_read_as_charon_writes_them(text: str, shown: str) -> None:
    assert str(ViciAddress.parse(text)) == shown


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("unix://run/charon.vici", "absolute path"),
        ("tcp://192.0.2.1:4502", "loopback address"),
        ("tcp://localhost:4502", "loopback address"),
        ("tcp://127.0.0.1:0", "port must be 1 to 65535"),
        ("tcp://127.0.0.1", "loopback address and a port"),
        ("/var/run/charon.vici", "write unix:///path"),
    ],
)
def test_bad_addresses_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ViciAddress.parse(text)


def _frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def _named(kind: int, name: str, body: bytes = b"") -> bytes:
    return bytes([kind, len(name)]) + name.encode() + body


class FakeVici:
    """Answers each request with its canned events and a response, on a unix socket."""

    def __init__(self, path: Path, answers: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]]):
        self.path, self.answers = path, answers
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read(self, conn: socket.socket) -> bytes | None:
        head = conn.recv(4, socket.MSG_WAITALL)
        if len(head) < 4:
            return None
        (length,) = struct.unpack("!I", head)
        return conn.recv(length, socket.MSG_WAITALL)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                event = ""
                while (packet := self._read(conn)) is not None:
                    kind, size = packet[0], packet[1]
                    name = packet[2 : 2 + size].decode()
                    if kind in (EVENT_REGISTER, EVENT_UNREGISTER):
                        event = name
                        conn.sendall(_frame(bytes([EVENT_CONFIRM])))
                        continue
                    body = Message.deserialize(FiniteStream(packet[2 + size :]))
                    self.requests.append((name, dict(body)))
                    events, response = self.answers[name]
                    for e in events:
                        conn.sendall(_frame(_named(EVENT, event, Message.serialize(e))))
                    conn.sendall(_frame(bytes([CMD_RESPONSE]) + Message.serialize(response)))

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeVici]:
    server = FakeVici(tmp_path / "charon.vici", {
        "list-sas": ([{"gw": {"state": "ESTABLISHED", "initiator-spi": "0a", "remote-host":
                              "192.0.2.2", "responder-spi": "0b", "child-sas": {}}}], {}),
        "list-conns": ([{"gw": {"remote_addrs": ["%any"], "children": {"net": {}}}}], {}),
        "initiate": ([], {"success": "no", "errmsg": "unable to resolve %any"}),
    })  # fmt: skip
    yield server
    server.close()


def test_the_session_lists_sas_and_connections(fake: FakeVici) -> None:
    charon = CharonVici(ViciAddress(path=str(fake.path)), timeout_s=5)
    (sa,) = charon.list_sas()
    assert (sa.connection, sa.spis, sa.state, sa.remote) == ("gw", (10, 11), "ESTABLISHED",
                                                             "192.0.2.2")  # fmt: skip
    (conn,) = charon.list_conns()
    assert conn.remote_addrs == ("%any",) and not conn.can_initiate


def test_a_refused_initiate_carries_charons_reason(fake: FakeVici) -> None:
    charon = CharonVici(ViciAddress(path=str(fake.path)), timeout_s=5)
    with pytest.raises(SafetyNetError, match=r"vici initiate at unix://.*unable to resolve %any"):
        charon.initiate("gw", "net", 1000)
    assert fake.requests[-1] == ("initiate", {"ike": b"gw", "timeout": b"1000", "child": b"net"})


def test_no_charon_is_an_error_that_names_the_socket(tmp_path: Path) -> None:
    charon = CharonVici(ViciAddress(path=str(tmp_path / "none.vici")), timeout_s=1)
    with pytest.raises(SafetyNetError, match=r"charon's vici at unix://.*none\.vici: No such file"):
        charon.list_sas()


def test_a_namespace_that_is_gone_is_an_error_that_names_the_socket(tmp_path: Path) -> None:
    charon = CharonVici(ViciAddress(path=str(tmp_path / "x.vici")), "iha-gone-000000", 1)
    with pytest.raises(SafetyNetError, match=r"charon's vici at unix://.*iha-gone-000000"):
        charon.list_conns()


def test_the_wait_for_connections_ends_when_they_are_loaded_or_when_told(fake: FakeVici) -> None:
    charon = CharonVici(ViciAddress(path=str(fake.path)), timeout_s=5)
    assert wait_for_connections(charon, {"gw"}, 5.0) is True
    assert wait_for_connections(charon, {"gw", "other"}, 0.0) is False
    assert wait_for_connections(charon, {"other"}, 60.0, keep_waiting=lambda: False) is False

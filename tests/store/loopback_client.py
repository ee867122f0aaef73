"""A real ``StoreClient`` whose requests go straight to a ``StoreService``: no socket I/O.

Every request and answer still goes through the wire codec, so tests of the
client's callers (the follower, the daemon) run against the real store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from appliance.store import _rawwire
from appliance.store.base import StoreUnavailableError
from appliance.store.client import StoreClient
from appliance.store.service import StoreService
from appliance.wire.constants import ExchangeType
from appliance.wire.messages import Message, decode_message, encode_message
from appliance.wire.payloads import Payload


class LoopbackClient(StoreClient):
    """``StoreClient`` whose requests go straight to a ``StoreService`` (no socket I/O)."""

    def __init__(self, service: StoreService, server: str = "127.0.0.1") -> None:
        super().__init__(server, 4501, b"k" * 32, "test", max_datagram=1400)
        self._sock.close()
        self.service = service
        self.requests: list[list[type]] = []
        self.down = False

    def exchange(
        self, requests: Sequence[tuple[ExchangeType, Sequence[Payload]]], raw: bool = False
    ) -> list[Any]:
        if self.down:
            raise StoreUnavailableError(f"store {self.server} is down")
        answers = []
        for exchange, payloads in requests:
            self.requests.append([type(p) for p in payloads])
            data = self.service.handle_bytes(
                encode_message(Message(exchange, self._new_id(), tuple(payloads)))
            )
            answers.append(_rawwire.split(data) if raw else decode_message(data))
        return answers

    def close(self) -> None:
        pass

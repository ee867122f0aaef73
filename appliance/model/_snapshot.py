"""Snapshot: one node's whole XFRM state at one moment."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from appliance.model._codec import (
    MODEL_VERSION,
    check_header,
    decode_object,
    encode_object,
    from_canonical,
    gc_paused,
    to_canonical,
)
from appliance.model._common import ModelError
from appliance.model._sad import SadEntry
from appliance.model._spd import SpdEntry

SNAPSHOT_FORMAT = "ipsec-ha/xfrm-snapshot"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A node's SAD and SPD, as dumped from the kernel."""

    node_id: str
    taken_at: datetime.datetime
    """Time-zone aware (UTC when taken by ipsec-ha)."""
    sad: tuple[SadEntry, ...] = ()
    spd: tuple[SpdEntry, ...] = ()
    format: str = SNAPSHOT_FORMAT
    version: int = MODEL_VERSION

    def __post_init__(self) -> None:
        if self.taken_at.tzinfo is None:
            raise ModelError("Snapshot.taken_at must be time-zone aware")

    def to_dict(self, *, redact_keys: bool = False) -> dict[str, Any]:
        """JSON-ready dict including the format/version header."""
        result: dict[str, Any] = encode_object(self, redact_keys=redact_keys)
        return result

    @classmethod
    def from_dict(cls, data: Any) -> Snapshot:
        """Inverse of ``to_dict``: checks the header first, so a newer version is named."""
        check_header(SNAPSHOT_FORMAT, data, "snapshot")
        snapshot: Snapshot = decode_object(cls, data, "snapshot")
        return snapshot

    def to_bytes(self) -> bytes:
        """Canonical bytes (the snapshot file's content): equal snapshots, equal bytes."""
        with gc_paused():
            body = self.to_dict()
            del body["format"], body["version"]
            return to_canonical(SNAPSHOT_FORMAT, body)

    @classmethod
    def from_bytes(cls, data: bytes) -> Snapshot:
        """Parse a snapshot file's content; bad or newer-version input raises ``ModelError``."""
        with gc_paused():
            return cls.from_dict(from_canonical(SNAPSHOT_FORMAT, data, "snapshot"))

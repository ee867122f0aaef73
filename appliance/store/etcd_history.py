"""What changed under a key prefix between two etcd revisions, from etcd's watch (sans-IO).

etcd keeps every revision of every key until it is compacted. A watch
created with ``start_revision`` replays that history (``POST /v3/watch`` on
the JSON gateway answers with one JSON object per line) before it reports
new writes, so "which keys changed after revision R" costs the events since
R, where a range with ``min_mod_revision`` reads every key of the range and
filters afterwards.

:class:`HistoryReader` takes the answer's lines as they arrive and says
when it has every event up to the revision asked for; the socket lives in
``EtcdClient.history``. A stream that does not parse, an error, or a
cancelled watch (etcd compacted the revisions asked for: ``compact_revision``)
is a :class:`HistoryUnavailable`, and the caller walks the ranges instead.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any


class HistoryUnavailable(Exception):
    """etcd did not give the history asked for; the message says why."""


@dataclass
class HistoryReader:
    """Collects the keys modified in ``(since, until]`` from a watch's answer lines.

    The watch must cover a key that is written at ``until`` (the store's
    ``revision`` key is written by every write that changes a server), so
    the history always reaches it.
    """

    since: int
    until: int
    touched: dict[bytes, bool] = field(default_factory=dict)
    """Each key put or deleted after ``since``, up to ``until``: whether its last event
    there was a put (False: it was deleted)."""
    done: bool = False
    created: bool = False

    def feed(self, line: bytes) -> bool:
        """Take one answer line; True once every event up to ``until`` was read."""
        if self.done or not line.strip():
            return self.done
        try:
            message = json.loads(line)
        except ValueError:
            raise HistoryUnavailable(f"etcd's watch answered {line[:80]!r}") from None
        if not isinstance(message, dict):
            raise HistoryUnavailable("etcd's watch answered something other than an object")
        if "error" in message:
            error = message["error"]
            text = error.get("message", error) if isinstance(error, dict) else error
            raise HistoryUnavailable(f"etcd's watch failed: {text}")
        result = message.get("result")
        if not isinstance(result, dict):
            raise HistoryUnavailable("etcd's watch answered without a result")
        compacted = int(result.get("compact_revision") or 0)
        if compacted:
            raise HistoryUnavailable(
                f"etcd compacted its history up to revision {compacted}, past {self.since + 1}"
            )
        if result.get("canceled"):
            reason = result.get("cancel_reason") or "no reason given"
            raise HistoryUnavailable(f"etcd cancelled the watch: {reason}")
        if result.get("created"):
            self.created = True
        events = result.get("events") or []
        if not isinstance(events, list):
            raise HistoryUnavailable("etcd's watch events are not a list")
        for event in events:
            key, revision = self._event(event)
            if self.since < revision <= self.until:
                # Events come in revision order, so the last one of a key stays.
                self.touched[key] = event.get("type", "PUT") != "DELETE"
            # One answer holds all of a revision's events: stop at its end, not mid-way.
            self.done = self.done or revision >= self.until
        return self.done

    @staticmethod
    def _event(event: Any) -> tuple[bytes, int]:
        try:
            kv = event["kv"]
            return base64.b64decode(kv["key"], validate=True), int(kv["mod_revision"])
        except (KeyError, TypeError, ValueError, binascii.Error):
            # Not the event itself in the message: its value may be an SA with its keys.
            raise HistoryUnavailable("etcd's watch sent an event without key or revision") from None

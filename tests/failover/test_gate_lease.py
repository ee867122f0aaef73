"""LeasedGate: renews the lease while the gate is open, never after it closed (fake gate)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import pytest

from appliance.errors import KernelError
from appliance.failover.gate_lease import LeasedGate

pytestmark = pytest.mark.unit


class FakeGate:
    def __init__(self, lease_s: float | None = 2.0, fail: bool = False) -> None:
        self.lease_s = lease_s
        self.fail = fail
        self.calls: list[str] = []
        self.renewed = threading.Event()

    def close(self, spis: Iterable[int]) -> None:
        self.calls.append("close")

    def add(self, spis: Iterable[int]) -> None:
        self.calls.append("add")

    def discard(self, spis: Iterable[int]) -> None:
        self.calls.append("discard")

    def open(self) -> None:
        self.calls.append("open")

    def stop_renewals(self) -> None:
        self.calls.append("stop_renewals")

    def renew(self) -> None:
        self.calls.append("renew")
        self.renewed.set()
        if self.fail:
            raise KernelError("libnftables rejected the renewal of the outbound gate's lease")


def test_renews_only_between_open_and_close() -> None:
    fake = FakeGate()
    leased = LeasedGate(fake, interval_s=0.01)
    assert leased.renew_once() is False and fake.calls == []  # closed: nothing to renew
    leased.close([1])
    leased.open()
    try:
        assert fake.renewed.wait(10)
        leased.close([1])
        after_close = len(fake.calls)
        assert leased.renew_once() is False
        time.sleep(0.1)  # the thread would have renewed many times by now
        assert len(fake.calls) == after_close
        assert fake.calls[:2] == ["close", "open"] and fake.calls[-1] == "close"
        assert "renew" in fake.calls
    finally:
        leased.stop()


def test_a_failed_renewal_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeGate(fail=True)
    leased = LeasedGate(fake, interval_s=3600)
    leased._open.set()  # as after open(), without the thread
    with caplog.at_level(logging.WARNING):
        assert leased.renew_once() is False
        assert leased.renew_once() is False
    assert leased.counters.failures == 2 and leased.counters.renewals == 0
    assert "lease" in (leased.counters.last_error or "")
    assert len([r for r in caplog.records if "not renewed" in r.getMessage()]) == 1


def test_needs_a_gate_with_a_lease() -> None:
    with pytest.raises(ValueError, match="lease"):
        LeasedGate(FakeGate(lease_s=None))


def test_renews_four_times_per_lease_by_default() -> None:
    assert LeasedGate(FakeGate(lease_s=2.0)).interval_s == 0.5

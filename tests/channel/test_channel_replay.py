"""The sliding anti-replay window on its own."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.channel._replay import ReplayWindow
from appliance.channel.events import DropReason

pytestmark = pytest.mark.unit


def test_window_accepts_new_rejects_duplicates_and_stale() -> None:
    window = ReplayWindow(32)
    for seq in (5, 3, 40):
        assert window.check(seq) is None
        window.update(seq)
    assert window.check(5) is DropReason.OUTSIDE_WINDOW  # 40 - 5 >= 32
    assert window.check(40) is DropReason.REPLAYED
    assert window.check(9) is None  # 40 - 9 < 32: the oldest number still inside
    assert window.check(8) is DropReason.OUTSIDE_WINDOW
    window.update(9)
    assert window.check(9) is DropReason.REPLAYED


@settings(deadline=None)
@given(st.lists(st.integers(1, 3000), max_size=300))
def test_window_matches_a_set_model(sequence: list[int]) -> None:
    window = ReplayWindow(1024)
    seen: set[int] = set()
    for seq in sequence:
        top = max(seen, default=0)
        if seq in seen and top - seq < 1024:
            expected: DropReason | None = DropReason.REPLAYED
        elif top - seq >= 1024:
            expected = DropReason.OUTSIDE_WINDOW
        else:
            expected = None
        assert window.check(seq) is expected
        if expected is None:
            window.update(seq)
            seen.add(seq)

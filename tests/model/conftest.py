"""Every model test also holds the fast decoder to the checked one: no fallback on valid input."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from appliance.model import _codec


@pytest.fixture(autouse=True)
def _fast_decoder_never_falls_back() -> Iterator[None]:
    before = dict(_codec.fast_path_fallbacks)
    yield
    after = dict(_codec.fast_path_fallbacks)
    assert after == before, f"the fast decoder refused valid documents: {after}"

"""The client's retrieved state: conversion to model objects, whole or stopped."""

from __future__ import annotations

import pytest
from entries_factory import make_state

from appliance.store import _convert as conv
from appliance.store.base import FetchCancelled
from appliance.store.client import CONVERT_STEP, RetrievedState

pytestmark = pytest.mark.unit


def retrieved(count: int) -> tuple[RetrievedState, list[object], list[object]]:
    sad, spd = make_state(count)
    state = RetrievedState("gw1", 1)
    state.sad_entries = [conv.sad_entry_bytes(conv.sad_to_payload(sa)) for sa in sad]
    state.spd_entries = [conv.spd_entry_bytes(conv.spd_to_payload(p)) for p in spd]
    return state, list(sad), list(spd)


def test_conversion_gives_the_model_objects_back() -> None:
    state, sad, spd = retrieved(10)
    assert state.sad == sad and state.spd == spd


def test_conversion_stops_when_asked_and_keeps_nothing() -> None:
    state, sad, _ = retrieved(CONVERT_STEP + 10)
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 1  # the first question passes, the second stops

    with pytest.raises(FetchCancelled):
        state.convert(stop)
    assert len(asked) == 2  # asked once per CONVERT_STEP entries, not per entry
    assert state.sad == sad  # nothing half-kept: a later use converts it all

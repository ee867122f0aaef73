"""The status file's JSON: the last plan's report is encoded once (StatusEncoder)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.failover.daemon import StatusEncoder

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "status",
    [
        {"role": "active", "report": {"advanced": [[1, 2, 3]] * 3, "timeline": []}, "ok": True},
        {"role": "standby", "report": None, "health": {"stores": {"a": {"up": True}}}},
        {"report": {"installed_sas": 0}},
        {},
    ],
)
def test_the_text_is_the_status(status: dict[str, Any]) -> None:
    assert json.loads(StatusEncoder().encode(status)) == {"report": None, **status}


def test_the_report_is_encoded_once_per_plan() -> None:
    encoder = StatusEncoder()
    report = {"advanced": [[0x1000, 0, 1 << 31]]}
    status = {"role": "active", "report": report, "health": {"lag": 1}}
    encoder.encode(status)
    # The probe changes only the health; the report object is the same one.
    report["advanced"].append([0x1001, 0, 1])  # not re-encoded: same object
    status["health"] = {"lag": 2}
    again = json.loads(encoder.encode(status))
    assert again["health"] == {"lag": 2}
    assert again["report"] == {"advanced": [[0x1000, 0, 1 << 31]]}
    # A new plan's report is a new object, encoded afresh.
    status["report"] = {"advanced": []}
    assert json.loads(encoder.encode(status))["report"] == {"advanced": []}

"""Shared sample payloads for the wire tests."""

from __future__ import annotations

import ipaddress

import pytest

from appliance.wire import Attribute, SpdEntryPayload, TrafficSelector


@pytest.fixture
def spd() -> SpdEntryPayload:
    return SpdEntryPayload(
        index=0x1000 | 1,
        priority=100,
        direction=1,
        action=0,
        flags=0,
        share=0,
        policy_type=0,
        family=2,
        prefixlen_s=24,
        prefixlen_d=24,
        sport_mask=0,
        dport_mask=0,
        ifindex=0,
        user=0,
        tsi=TrafficSelector(
            ipaddress.IPv4Address("198.51.100.0"), ipaddress.IPv4Address("198.51.100.255")
        ),
        tsr=TrafficSelector(
            ipaddress.IPv4Address("203.0.113.0"), ipaddress.IPv4Address("203.0.113.255")
        ),
        attributes=(Attribute(5, b"\x01\x02"),),
    )

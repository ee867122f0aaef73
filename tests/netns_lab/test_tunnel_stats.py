"""The lab's reading of ``ip -s -d xfrm state``: legacy and ESN replay states."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import LabError
from netns_lab.tunnel import SaStats, parse_sa_stats

pytestmark = pytest.mark.unit

# iproute2 6.1 in the lab VM: an SA with replay-window 32 (legacy) and one with 1024
# (ESN replay state); the key is a made-up constant
RECORDED = Path(__file__).parents[1] / "data" / "lab" / "ip_s_d_xfrm_state_legacy_and_esn.txt"


def test_legacy_and_esn_replay_states_are_both_read() -> None:
    assert parse_sa_stats(RECORDED.read_text(), "vm") == [
        SaStats(spi=0x1235, src="192.0.2.1", dst="192.0.2.10", packets=0, replay_failed=0,
                oseq=0x10, seq=0),
        SaStats(spi=0x1234, src="192.0.2.10", dst="192.0.2.1", packets=0, replay_failed=0,
                oseq=0, seq=0x2A),
    ]  # fmt: skip


def test_the_high_half_of_an_esn_counter_counts() -> None:
    text = RECORDED.read_text().replace("seq-hi 0x0, seq 0x2a", "seq-hi 0x1, seq 0x2a")
    assert parse_sa_stats(text, "vm")[1].seq == (1 << 32) + 0x2A


def test_output_it_cannot_read_is_an_error_naming_the_host() -> None:
    text = RECORDED.read_text().replace("anti-replay context", "anti-replay-context")
    with pytest.raises(LabError, match="unexpected `ip -s xfrm state` output in gw2"):
        parse_sa_stats(text, "gw2")

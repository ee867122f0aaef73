"""The lab's reading of charon's log: a DPD is answered only with the response to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from netns_lab.charon import Charons

pytestmark = pytest.mark.unit

# as charon 5.9.8 logs an IKEv2 DPD at the lab's level (default = 1)
DPD = """\
09[IKE] sending DPD request
09[ENC] generating INFORMATIONAL request 7 [ ]
09[NET] sending packet: from 192.0.2.20[4500] to 192.0.2.1[4500] (80 bytes)
12[NET] received packet: from 192.0.2.1[4500] to 192.0.2.20[4500] (80 bytes)
12[ENC] parsed INFORMATIONAL response 7 [ ]
"""


def charons_with_log(tmp_path: Path, text: str) -> Charons:
    charons = Charons.__new__(Charons)  # no lab: only the log is read
    charons.folder = tmp_path
    (tmp_path / "client-charon.log").write_text(text)
    return charons


def test_a_dpd_counts_once_its_response_is_parsed(tmp_path: Path) -> None:
    assert charons_with_log(tmp_path, DPD).dpd_answered("client", 0) is True
    unanswered = DPD.split("12[NET]")[0]
    assert charons_with_log(tmp_path, unanswered).dpd_answered("client", 0) is False
    # the response to another request (a rekey's) is not the DPD's
    other = DPD.replace(
        "parsed INFORMATIONAL response 7 [ ]", "parsed INFORMATIONAL response 6 [ ]"
    )
    assert charons_with_log(tmp_path, other).dpd_answered("client", 0) is False
    # only what the log holds past the mark
    assert charons_with_log(tmp_path, DPD).dpd_answered("client", 5) is False

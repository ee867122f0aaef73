"""The datagrams recorded from strongSwan's ha plugin (tests/data/strongswan_ha/)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

RECORDINGS = Path(__file__).parents[1] / "data" / "strongswan_ha" / "recordings.json"


@dataclass(frozen=True)
class Recorded:
    step: str
    """The step of record.py during which the datagram arrived."""
    index: int
    """Its position in the whole capture."""
    data: bytes


@cache
def recording() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(RECORDINGS.read_text())
    return result


def datagrams() -> list[Recorded]:
    out: list[Recorded] = []
    for step in recording()["steps"]:
        for h in step["datagrams"]:
            out.append(Recorded(step["step"], len(out), bytes.fromhex(h)))
    return out


def step(name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in recording()["steps"] if s["step"] == name)
    return found

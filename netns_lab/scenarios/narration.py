"""What a scenario did and when, noted as it happens."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from appliance.errors import ApplianceError
from netns_lab.lab import LabInterrupted


class Narration:
    """A scenario's events (monotonic time, text), each echoed to ``say`` when noted."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.events: list[tuple[float, str]] = []

    def event(self, text: str) -> float:
        """Note ``text`` now; returns the time it was noted at."""
        now = time.monotonic()
        self.events.append((now, text))
        self.say(f"   {text}")
        return now


class _Outcome(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class _Runnable(Protocol):
    def run(self) -> Any: ...


def run_from_command_line(
    scenario: _Runnable, as_json: bool, report_lines: Callable[[Any], list[str]]
) -> int:
    """Run ``scenario`` for a scenario module's ``main``: print its outcome (JSON or the
    report) and return the exit status; a lab error or an interrupt is one line on stderr."""
    try:
        outcome: _Outcome = scenario.run()
    except LabInterrupted as exc:
        print(f"scenario: {exc}; the lab was removed", file=sys.stderr)
        return 128 + exc.signum
    except (ApplianceError, subprocess.SubprocessError) as exc:
        print(f"scenario: error: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(outcome.to_dict(), indent=2))
    else:
        print("\n".join(report_lines(outcome)))
    return 0

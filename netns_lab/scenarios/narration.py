"""What a scenario did and when, noted as it happens."""

from __future__ import annotations

import time
from collections.abc import Callable


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

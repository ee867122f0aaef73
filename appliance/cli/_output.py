"""Output helpers shared by the commands: JSON for scripts, text for people."""

import json
import sys
from collections.abc import Callable
from typing import Any

import typer


def emit(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    """Print ``data`` as JSON (stable key order) or through ``render``."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    else:
        text = render(data)
        if text:
            typer.echo(text)


def show_progress(as_json: bool) -> bool:
    """Progress bars only on a terminal and never in JSON mode."""
    return not as_json and sys.stderr.isatty()

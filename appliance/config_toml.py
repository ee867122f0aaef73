"""Checked reading of TOML configuration files, shared by the daemon, store and nft configs.

Errors name the file and the key (``config FILE: [store].port: must be an
integer 1..65535, got "abc"``); keys nobody read are errors, so a typo never
falls back to a default silently.
"""

from __future__ import annotations

import ipaddress
import json
import math
import tomllib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

from appliance.errors import ConfigError

_T = TypeVar("_T")
_MISSING: Any = object()


def read_toml(path: Path, label: str | None = None) -> dict[str, Any]:
    """The parsed document at ``path``; errors start with ``label`` (default ``config PATH``)."""
    where = f"config {path}" if label is None else label
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None


def check_tables(
    path: Path, data: dict[str, Any], known: Collection[str], required: Collection[str]
) -> None:
    """Refuse top-level tables outside ``known`` and missing ``required`` ones."""
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"config {path}: [{unknown[0]}]: unknown table (expected {', '.join(known)})"
        )
    for name in required:
        if name not in data:
            raise ConfigError(f"config {path}: [{name}]: table is required")


def _fmt(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


class TomlTable:
    """Typed access to one TOML table that remembers which keys were read."""

    def __init__(self, source: str | Path, name: str, data: Any) -> None:
        self.source = source
        self.name = name
        if not isinstance(data, dict):
            raise ConfigError(f"config {source}: [{name}] must be a table")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"config {self.source}: [{self.name}].{key}: {message}")

    def get(
        self, key: str, check: Callable[[Any], _T | None], what: str, default: Any = _MISSING
    ) -> _T:
        """The checked value of ``key``; ``what`` describes a valid one in the error."""
        self.used.add(key)
        if key not in self.data:
            if default is _MISSING:
                raise self.fail(key, f"is required ({what})")
            return default  # type: ignore[no-any-return]
        value = self.data[key]
        result = check(value)
        if result is None:
            raise self.fail(key, f"must be {what}, got {_fmt(value)}")
        return result

    def sub(self, key: str) -> TomlTable | None:
        """The nested table ``[name.key]``, or None when absent."""
        self.used.add(key)
        if key not in self.data:
            return None
        return TomlTable(self.source, f"{self.name}.{key}", self.data[key])

    def finish(self) -> None:
        """Refuse the first key that no ``get``/``sub`` asked for."""
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.fail(unknown[0], "unknown key")


def is_integer(value: object) -> TypeGuard[int]:
    """An integer, but not a bool (an int subclass; ``true`` is never a port or a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def int_in(lo: int, hi: int) -> Callable[[Any], int | None]:
    """A check accepting integers ``lo..hi``."""

    def check(v: Any) -> int | None:
        return v if is_integer(v) and lo <= v <= hi else None

    return check


def float_in(lo: float, hi: float) -> Callable[[Any], float | None]:
    """A check accepting finite numbers ``lo..hi`` (as float)."""

    def check(v: Any) -> float | None:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        return float(v) if lo <= v <= hi else None

    return check


def ip_text(v: Any) -> str | None:
    """A check accepting an IP address string; returns its normalised text."""
    try:
        return str(ipaddress.ip_address(v)) if isinstance(v, str) else None
    except ValueError:
        return None


def abs_path(v: Any) -> Path | None:
    """A check accepting an absolute path string."""
    return Path(v) if isinstance(v, str) and v.startswith("/") else None


def server_id(v: Any) -> str | None:
    """A check accepting a server ID / node name (``store.base.check_server_id``)."""
    from appliance.store.base import InvalidRequestError, check_server_id

    try:
        return check_server_id(v)
    except InvalidRequestError:
        return None

"""A byte buffer whose ``pull_*`` raise only RemoteWireError and ``push_*`` only LocalWireError.

Decoding reads from bytes that came off the network.  Every read is bounds
checked here, once, so that the payload parsers above cannot fail with an
``IndexError`` or ``struct.error`` on truncated input.
"""

from __future__ import annotations

import struct

from appliance.wire._errors import LocalWireError, RemoteWireError

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


class Buffer:
    """Read cursor over immutable bytes, or an append-only writer."""

    __slots__ = ("_data", "_out", "_pos", "_what")

    def __init__(self, data: bytes = b"", what: str = "message") -> None:
        self._data = data
        self._pos = 0
        self._out = bytearray()
        self._what = what

    # -- reading -------------------------------------------------------
    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    @property
    def position(self) -> int:
        return self._pos

    def eof(self) -> bool:
        return self._pos >= len(self._data)

    def pull_bytes(self, length: int, field: str = "field") -> bytes:
        if length < 0 or self._pos + length > len(self._data):
            raise RemoteWireError(
                f"{self._what} truncated: {field} needs {length} bytes at offset {self._pos}, "
                f"{self.remaining} left"
            )
        chunk = self._data[self._pos : self._pos + length]
        self._pos += length
        return chunk

    def pull_uint8(self, field: str = "field") -> int:
        return self.pull_bytes(1, field)[0]

    def pull_uint16(self, field: str = "field") -> int:
        return int(_U16.unpack(self.pull_bytes(2, field))[0])

    def pull_uint32(self, field: str = "field") -> int:
        return int(_U32.unpack(self.pull_bytes(4, field))[0])

    def pull_uint64(self, field: str = "field") -> int:
        return int(_U64.unpack(self.pull_bytes(8, field))[0])

    def pull_rest(self) -> bytes:
        return self.pull_bytes(self.remaining)

    def expect_end(self) -> None:
        if self.remaining:
            raise RemoteWireError(f"{self._what} has {self.remaining} unexpected trailing bytes")

    # -- writing -------------------------------------------------------
    def push_bytes(self, value: bytes) -> None:
        self._out += value

    def push_uint8(self, value: int, field: str = "field") -> None:
        self._out.append(_checked(value, 8, field))

    def push_uint16(self, value: int, field: str = "field") -> None:
        self._out += _U16.pack(_checked(value, 16, field))

    def push_uint32(self, value: int, field: str = "field") -> None:
        self._out += _U32.pack(_checked(value, 32, field))

    def push_uint64(self, value: int, field: str = "field") -> None:
        self._out += _U64.pack(_checked(value, 64, field))

    def getvalue(self) -> bytes:
        return bytes(self._out)

    def __len__(self) -> int:
        return len(self._out)


def _checked(value: int, bits: int, field: str) -> int:
    # Encoding a value that does not fit is a caller bug; say which field.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise LocalWireError(f"{field} = {value!r} does not fit an unsigned {bits}-bit field")
    return value

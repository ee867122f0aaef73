"""Netlink framing: messages split at their aligned lengths, bad lengths refused."""

from __future__ import annotations

import struct

import pytest

from appliance.netlink import NLMSGHDR, frames

pytestmark = pytest.mark.unit


def message(kind: int, flags: int, body: bytes) -> bytes:
    """One message padded to 4 bytes (``nlmsg_len`` counts the body, not the padding)."""
    length = NLMSGHDR.size + len(body)
    return NLMSGHDR.pack(length, kind, flags, 1, 0) + body + bytes(-length % 4)


def test_messages_are_split_at_their_aligned_lengths() -> None:
    first, second = message(20, 2, b"abcde"), message(3, 2, struct.pack("=i", 0))
    assert list(frames(first + second)) == [
        (20, 2, 0, 21),
        (3, 2, 24, 24 + 20),
    ]


def test_trailing_bytes_shorter_than_a_header_are_padding() -> None:
    assert list(frames(message(3, 0, b"") + bytes(8))) == [(3, 0, 0, 16)]


@pytest.mark.parametrize("length", [0, 15, 17 + 100])
def test_a_length_too_short_or_past_the_datagram_is_refused(length: int) -> None:
    with pytest.raises(ValueError, match=f"truncated netlink message at offset 0 .length {length}"):
        list(frames(NLMSGHDR.pack(length, 3, 0, 1, 0) + bytes(4)))

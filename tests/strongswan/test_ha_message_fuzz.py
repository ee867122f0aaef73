"""Fuzz: 100,000 mutations of recorded plugin datagrams each give a message or an
HaMessageError, never another exception; a mutation that decodes re-encodes to itself."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest
from ha_recordings import datagrams

from appliance.strongswan import (
    KIND_OF,
    HaKind,
    HaMessage,
    HaMessageError,
    decode,
    encode,
)

pytestmark = pytest.mark.unit

MUTATIONS = 100_000
SEED = 20261206


def _boundaries(data: bytes) -> list[tuple[int, HaKind]]:
    """Offset and kind of every attribute of a valid datagram."""
    message = decode(data)
    out = []
    for k, attr in enumerate(message.attributes):
        offset = len(encode(HaMessage(message.type, message.attributes[:k])))
        out.append((offset, KIND_OF[attr.type]))
    return out


def _bit_flips(rng: random.Random, data: bytearray, _: list[tuple[int, HaKind]]) -> None:
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)


def _truncate(rng: random.Random, data: bytearray, _: list[tuple[int, HaKind]]) -> None:
    del data[rng.randrange(len(data)) :]


def _insert(rng: random.Random, data: bytearray, _: list[tuple[int, HaKind]]) -> None:
    at = rng.randrange(len(data) + 1)
    data[at:at] = rng.randbytes(rng.randint(1, 8))


def _swap_attribute_type(rng: random.Random, data: bytearray, b: list[tuple[int, HaKind]]) -> None:
    offsets = [o for o, _ in b if o < len(data)]  # an earlier mutation may have cut the end
    if offsets:
        new_type = rng.randrange(0, 46) if rng.random() < 0.9 else rng.randrange(256)
        data[rng.choice(offsets)] = new_type


def _change_length(rng: random.Random, data: bytearray, b: list[tuple[int, HaKind]]) -> None:
    at_length = {HaKind.CHUNK: 1, HaKind.IDENTITY: 2}  # offset of the length in the attribute
    fields = [o + at_length[k] for o, k in b if k in at_length and o < len(data)]
    if fields:
        at = rng.choice(fields)
        value = rng.choice([0, 1, rng.randrange(0x10000), 0xFFFF, 0x100])
        data[at : at + 2] = value.to_bytes(2, "big")


def _header(rng: random.Random, data: bytearray, _: list[tuple[int, HaKind]]) -> None:
    data[rng.randrange(min(2, len(data)))] = rng.randrange(256)


def _splice(rng: random.Random, data: bytearray, _: list[tuple[int, HaKind]]) -> None:
    at = rng.randrange(len(data) + 1)
    start = rng.randrange(len(data))
    data[at:at] = data[start : start + rng.randint(1, 40)]


MUTATORS: list[Callable[[random.Random, bytearray, list[tuple[int, HaKind]]], None]] = [
    _bit_flips, _truncate, _insert, _swap_attribute_type, _change_length, _header, _splice,
]  # fmt: skip


def test_mutated_plugin_datagrams_give_a_message_or_an_error() -> None:
    rng = random.Random(SEED)
    unique = dict.fromkeys(r.data for r in datagrams())  # heartbeats repeat: count them once
    seeds = [(data, _boundaries(data)) for data in unique]
    outcomes: Counter[str] = Counter()
    for _ in range(MUTATIONS):
        original, boundaries = rng.choice(seeds)
        data = bytearray(original)
        for mutate in rng.sample(MUTATORS, rng.randint(1, 2)):
            if data:
                mutate(rng, data, boundaries)
        mutated = bytes(data)
        try:
            message = decode(mutated)
        except HaMessageError:
            outcomes["error"] += 1
            continue
        assert encode(message) == mutated, mutated.hex()
        outcomes["message"] += 1
    print(dict(outcomes), f"from {len(seeds)} distinct datagrams")
    assert outcomes["error"] + outcomes["message"] == MUTATIONS
    assert outcomes["error"] > MUTATIONS // 10 and outcomes["message"] > MUTATIONS // 20

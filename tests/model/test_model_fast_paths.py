"""The model's fast paths (address parsing, generated checks, full documents) change nothing."""

from __future__ import annotations

import collections
import ipaddress
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model_strategies import snapshots

from appliance import model as m
from appliance.model import _codec

pytestmark = pytest.mark.unit


def reference(text: str) -> m.Address | None:
    """What ``ipaddress`` makes of the text (None: it refuses it)."""
    try:
        if ":" in text:
            return ipaddress.IPv6Address(text)
        return ipaddress.IPv4Address(text)
    except ValueError:
        return None


def parsed(text: str) -> m.Address | None:
    try:
        return _codec._parse_address(text)
    except ValueError:
        return None


def same(a: m.Address | None, b: m.Address | None) -> bool:
    if a is None or b is None:
        return a is b
    return (
        type(a) is type(b)
        and a == b
        and getattr(a, "scope_id", None) == getattr(b, "scope_id", None)
    )


EDGE_CASES = [
    "::",
    "::1",
    "1::",
    "1:2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7::",
    "1:2:3:4:5:6:7:8:9",
    "::ffff:192.0.2.1",
    "::192.0.2.01",
    "1:2:3:4:5:6:192.0.2.1",
    "2001:DB8::A",
    "2001:db8::1%eth0",
    "fe80::1%1",
    "12345::",
    "1::2::3",
    ":1::",
    " ::1",
    "::1\x00",
    "::\u0661",  # an Arabic-Indic digit one
    "192.0.2.1",
    "192.0.2.01",
    "192.0.2",
    "192.0.2.256",
    "192.0.2.1.5",
    "0x1.2.3.4",
    "192.0.2.1 ",
    "\u0661\u0669\u0662.0.2.1",
    "",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_address_texts_parse_exactly_as_ipaddress_parses_them(text: str) -> None:
    assert same(parsed(text), reference(text))


@given(st.ip_addresses())
def test_every_address_text_parses_back_to_the_address(address: m.Address) -> None:
    assert same(parsed(str(address)), address)
    assert same(parsed(address.exploded), address)


@given(st.text(alphabet="0123456789abcdefABCDEF:.%", max_size=45))
def test_address_like_garbage_is_refused_exactly_when_ipaddress_refuses_it(text: str) -> None:
    assert same(parsed(text), reference(text))


def test_the_generated_checks_accept_what_the_one_by_one_checks_accept() -> None:
    # Integer subclasses (the enums) are valid values, only not the fast case.
    assert m.Template(mode=m.Mode.TUNNEL).mode == 1
    assert m.SadEntry(ipaddress.IPv4Address("192.0.2.1"), flags=m.StateFlag.ESN).esn
    assert m.SadEntry(ipaddress.IPv4Address("192.0.2.1"), if_id=None).if_id is None
    six = ipaddress.IPv6Address("2001:db8::1")
    assert m.Selector(daddr=six, saddr=six, family=m.AF_INET6).family == m.AF_INET6


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: m.Selector(dport=True), "Selector.dport must be an integer, got True"),
        (lambda: m.Selector(dport=-1), r"Selector.dport = -1 is out of range"),
        (lambda: m.Selector(dport=1 << 16), "out of range for an unsigned 16-bit field"),
        (lambda: m.Mark(value="1"), "Mark.value must be an integer, got '1'"),
        (
            lambda: m.SadEntry(ipaddress.IPv4Address("192.0.2.1"), if_id=1 << 32),
            "SadEntry.if_id = 4294967296 is out of range",
        ),
        (
            lambda: m.Selector(family=m.AF_INET6),
            r"Selector.daddr = 0.0.0.0 does not match family 10",
        ),
        (lambda: m.Template(daddr="192.0.2.1"), "Template.daddr must be an IP address"),
    ],
)
def test_the_generated_checks_refuse_what_the_one_by_one_checks_refuse(
    build: object, message: str
) -> None:
    with pytest.raises(m.ModelError, match=message):
        build()  # type: ignore[operator]


def test_documents_without_their_defaulted_fields_decode_to_the_defaults() -> None:
    entry = m.SadEntry.from_dict({"daddr": "192.0.2.2", "spi": 5, "extra_attrs": [[1, "00"]]})
    assert entry == m.SadEntry(ipaddress.IPv4Address("192.0.2.2"), spi=5, extra_attrs=((1, b"\0"),))
    full = m.SadEntry.from_dict(entry.to_dict())
    assert full == entry


@settings(max_examples=60, deadline=None)
@given(snapshots)
def test_the_fast_decoder_decodes_every_valid_snapshot_itself(snapshot: m.Snapshot) -> None:
    before = sum(_codec.fast_path_fallbacks.values())
    assert m.Snapshot.from_dict(snapshot.to_dict()) == snapshot
    assert sum(_codec.fast_path_fallbacks.values()) == before


def test_a_fast_decoder_that_refuses_valid_input_is_counted_and_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(data: object) -> m.Mark:
        raise KeyError("a bug in the generated decoder")

    monkeypatch.setitem(_codec._fast, m.Mark, broken)
    monkeypatch.setattr(_codec, "fast_path_fallbacks", collections.Counter())
    with caplog.at_level(logging.WARNING, logger="appliance.model"):
        first = _codec.decode_object(m.Mark, {"value": 1, "mask": 2}, "mark")
        second = _codec.decode_object(m.Mark, {"value": 3, "mask": 4}, "mark")
    assert (first, second) == (m.Mark(1, 2), m.Mark(3, 4))  # the checked decoder still decodes
    assert _codec.fast_path_fallbacks == {"Mark": 2}
    warnings = [r for r in caplog.records if "fast decoder of Mark refused" in r.getMessage()]
    assert len(warnings) == 1


def test_invalid_input_is_not_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_codec, "fast_path_fallbacks", collections.Counter())
    with pytest.raises(m.ModelError, match=r"mark\.value"):
        _codec.decode_object(m.Mark, {"value": "1", "mask": 2}, "mark")
    assert not _codec.fast_path_fallbacks

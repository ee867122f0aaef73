"""The model's canonical serialisation: lossless, canonical, versioned, strict."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging

import pytest
from hypothesis import given
from model_strategies import sad_entries, snapshots, spd_entries

from appliance import model as m

pytestmark = pytest.mark.unit

SECRET = bytes(range(0xA0, 0xB0))


def _sa(**overrides: object) -> m.SadEntry:
    fields: dict[str, object] = {
        "daddr": ipaddress.ip_address("192.0.2.2"),
        "saddr": ipaddress.ip_address("192.0.2.1"),
        "spi": 0xC0FFEE01,
        "mode": m.Mode.TUNNEL,
        "reqid": 7,
        "aead": m.AeadAlgorithm("rfc4106(gcm(aes))", 160, 128, m.KeyMaterial(SECRET + b"salt")),
        "replay_esn": m.ReplayStateEsn(4, 10, 0, 1, 0, 128, (0, 0, 0, 0)),
    }
    fields.update(overrides)
    return m.SadEntry(**fields)  # type: ignore[arg-type]


@given(sad_entries())
def test_sad_entry_round_trips_through_canonical_bytes(entry: m.SadEntry) -> None:
    data = entry.to_bytes()
    assert m.SadEntry.from_bytes(data) == entry
    assert m.SadEntry.from_dict(json.loads(json.dumps(entry.to_dict()))) == entry


@given(spd_entries)
def test_spd_entry_round_trips_through_canonical_bytes(entry: m.SpdEntry) -> None:
    assert m.SpdEntry.from_bytes(entry.to_bytes()) == entry


@given(snapshots)
def test_snapshot_round_trips_and_is_canonical(snapshot: m.Snapshot) -> None:
    data = snapshot.to_bytes()
    again = m.Snapshot.from_bytes(data)
    assert again == snapshot
    assert again.to_bytes() == data
    # Canonical: key order and whitespace of the input do not matter.
    reordered = json.dumps(json.loads(data), indent=3).encode()
    assert m.Snapshot.from_bytes(reordered).to_bytes() == data


def test_equal_entries_give_equal_bytes_and_different_entries_different_bytes() -> None:
    assert _sa().to_bytes() == _sa().to_bytes()
    assert _sa().to_bytes() != _sa(spi=0xC0FFEE02).to_bytes()


def test_canonical_bytes_are_sorted_compact_json_with_hex_binary() -> None:
    data = _sa(extra_attrs=((99, b"\x01\x02"),)).to_bytes()
    document = json.loads(data)
    assert data == json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    assert document["format"] == m.SAD_ENTRY_FORMAT
    assert document["version"] == m.MODEL_VERSION
    assert document["entry"]["aead"]["key"] == (SECRET + b"salt").hex()
    assert document["entry"]["extra_attrs"] == [[99, "0102"]]
    assert document["entry"]["daddr"] == "192.0.2.2"


def test_ipv4_and_ipv6_addresses_keep_their_version() -> None:
    entry = _sa(
        daddr=ipaddress.ip_address("2001:db8::2"),
        saddr=ipaddress.ip_address("2001:db8::1"),
        family=m.AF_INET6,
        selector=m.Selector(
            daddr=ipaddress.ip_address("198.51.100.0"),
            saddr=ipaddress.ip_address("192.0.2.0"),
            prefixlen_d=24,
            prefixlen_s=24,
        ),
        coaddr=ipaddress.ip_address("::ffff:192.0.2.9"),
    )
    again = m.SadEntry.from_bytes(entry.to_bytes())
    assert isinstance(again.selector.daddr, ipaddress.IPv4Address)
    assert isinstance(again.daddr, ipaddress.IPv6Address)
    assert isinstance(again.coaddr, ipaddress.IPv6Address)
    assert again == entry


def test_newer_snapshot_version_is_refused_with_a_clear_error() -> None:
    snapshot = m.Snapshot("node-a", datetime.datetime.now(datetime.UTC), (_sa(),))
    document = json.loads(snapshot.to_bytes())
    document["version"] = m.MODEL_VERSION + 1
    with pytest.raises(m.UnsupportedVersionError, match=r"version 2 is newer.*upgrade"):
        m.Snapshot.from_bytes(json.dumps(document).encode())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="something-else"), "format is 'something-else'"),
        (lambda d: d.update(version="1"), "invalid format version"),
        (lambda d: d["sad"][0].update(spi=2**32), r"sad\[0\].*spi = 4294967296 is out of range"),
        (lambda d: d["sad"][0].update(daddr="not-an-ip"), r"sad\[0\]\.daddr: 'not-an-ip'"),
        (lambda d: d["sad"][0].update(colour="blue"), r"unknown field\(s\) colour"),
        (lambda d: d["sad"][0].pop("daddr"), "missing field daddr"),
        (lambda d: d["sad"][0]["aead"].update(key="zz"), r"aead\.key: not a hex string"),
        (lambda d: d["sad"][0].update(family=2, daddr="2001:db8::1"), "does not match family"),
        (lambda d: d.update(taken_at="2026-01-01T00:00:00"), "has no time zone"),
    ],
)
def test_bad_snapshot_documents_raise_model_error_naming_the_problem(
    mutate: object, message: str
) -> None:
    snapshot = m.Snapshot("node-a", datetime.datetime.now(datetime.UTC), (_sa(),))
    document = json.loads(snapshot.to_bytes())
    mutate(document)  # type: ignore[operator]
    with pytest.raises(m.ModelError, match=message):
        m.Snapshot.from_bytes(json.dumps(document).encode())


def test_garbage_is_not_a_snapshot() -> None:
    with pytest.raises(m.ModelError, match="not valid JSON"):
        m.Snapshot.from_bytes(b"\x00\xff")


def test_model_objects_are_frozen_and_slotted() -> None:
    entry = _sa()
    with pytest.raises(AttributeError):
        entry.spi = 1  # type: ignore[misc]
    assert not hasattr(entry, "__dict__")


def test_repr_str_and_logs_never_show_key_bytes(caplog: pytest.LogCaptureFixture) -> None:
    entry = _sa(
        crypt=m.Algorithm("cbc(aes)", 128, m.KeyMaterial(SECRET)),
        auth_trunc=m.AuthTruncAlgorithm("hmac(sha256)", 128, 128, m.KeyMaterial(SECRET)),
    )
    snapshot = m.Snapshot("n", datetime.datetime.now(datetime.UTC), (entry,))
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").debug("entry %s %r snapshot %s", entry, entry, snapshot)
    texts = [repr(entry), str(entry), repr(snapshot), caplog.text, repr(m.KeyMaterial(SECRET))]
    for text in texts:
        assert SECRET.hex() not in text
        assert repr(SECRET)[2:-1] not in text
    assert "16 bytes redacted" in repr(entry)


def test_redacted_dict_has_no_keys_but_everything_else() -> None:
    entry = _sa()
    redacted = entry.to_dict(redact_keys=True)
    assert redacted["aead"]["key"] is None
    assert redacted["aead"]["name"] == "rfc4106(gcm(aes))"
    assert SECRET.hex() not in json.dumps(redacted)


def test_out_of_range_values_are_refused_at_construction() -> None:
    with pytest.raises(m.ModelError, match="replay_window = 256 is out of range"):
        _sa(replay_window=256)
    with pytest.raises(m.ModelError, match="bmp has 1 words but bmp_len is 2"):
        m.ReplayStateEsn(bmp_len=2, bmp=(0,))
    with pytest.raises(m.ModelError, match="extra_attrs item"):
        _sa(extra_attrs=((70000, b""),))


def test_xfrm_addresses_are_16_bytes_with_ipv4_first() -> None:
    raw4 = ipaddress.ip_address("192.0.2.1").packed + bytes(12)
    assert m.address_to_xfrm(ipaddress.ip_address("192.0.2.1")) == raw4
    assert m.address_from_xfrm(m.AF_INET, raw4) == ipaddress.ip_address("192.0.2.1")
    raw6 = ipaddress.ip_address("2001:db8::1").packed
    assert m.address_from_xfrm(m.AF_INET6, raw6) == ipaddress.ip_address("2001:db8::1")
    # AF_UNSPEC selectors keep all 16 bytes.
    assert m.address_to_xfrm(m.address_from_xfrm(m.AF_UNSPEC, raw4)) == raw4


def test_esn_sequence_numbers_combine_hi_and_lo() -> None:
    entry = _sa(
        replay_esn=m.ReplayStateEsn(0, oseq=5, oseq_hi=2, seq=1, seq_hi=3), flags=m.StateFlag.ESN
    )
    assert entry.esn
    assert entry.oseq64 == (2 << 32) | 5
    assert entry.replay_esn is not None and entry.replay_esn.seq64 == (3 << 32) | 1


def test_flag_names_show_unknown_bits() -> None:
    assert m.flag_names(0x81 | 0x200, m.StateFlag) == ["noecn", "esn", "0x200"]


def test_non_esn_sa_with_esn_replay_structure_counts_in_32_bits() -> None:
    entry = _sa(replay_esn=m.ReplayStateEsn(0, oseq=5, oseq_hi=2))
    assert not entry.esn
    assert entry.oseq64 == 5


@given(snapshots)
def test_fast_and_checked_decoders_agree(snapshot: m.Snapshot) -> None:
    from appliance.model import _codec

    document = json.loads(snapshot.to_bytes())
    fast = _codec._fast_decoder(m.Snapshot)(document)
    checked = _codec._decode(m.Snapshot, document)
    assert fast == checked == snapshot

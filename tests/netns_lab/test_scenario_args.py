"""The IPsec failover scenario refuses combinations it cannot run, before building a lab."""

from __future__ import annotations

import pytest

from netns_lab.scenarios.ipsec_failover import Scenario

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "hot", "gate": "policy"},  # charon's out policies: the nft gate only
        {"gate": "policy"},
        {"gate": "nft", "naive": True},
        {"mode": "hot", "gate": "nft", "store_gap": "recovered"},
    ],
)
def test_the_strongswan_variant_needs_nft(
    kwargs: dict[str, object],
) -> None:
    with pytest.raises(ValueError, match="ike needs the nft gate"):
        Scenario(ike=True, **kwargs)  # type: ignore[arg-type]


def test_the_strongswan_variant_itself() -> None:
    for mode in ("cold", "hot"):
        for how in ("kill", "link", "split"):
            scenario = Scenario(mode, how, gate="nft", ike=True)
            assert scenario.ike and scenario.charons is None  # charon starts with the run

"""The IPsec failover scenario refuses combinations it cannot run, before building a lab."""

from __future__ import annotations

import pytest

from netns_lab.scenarios.ipsec_failover import Scenario

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "hot", "gate": "nft"},  # [ike] feed works with the cold standby only
        {"gate": "policy"},  # charon's out policies are held back by the nft gate only
        {"gate": "nft", "naive": True},
    ],
)
def test_the_strongswan_variant_needs_cold_and_nft(
    kwargs: dict[str, object],
) -> None:
    with pytest.raises(ValueError, match="ike needs the cold standby and the nft gate"):
        Scenario(ike=True, **kwargs)  # type: ignore[arg-type]


def test_the_strongswan_variant_itself() -> None:
    for how in ("kill", "link", "split"):
        scenario = Scenario("cold", how, gate="nft", ike=True)
        assert scenario.ike and scenario.charons is None  # charon starts with the run

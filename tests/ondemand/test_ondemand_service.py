"""The service's argument checks (its behaviour is in test_ondemand_service_netns)."""

from __future__ import annotations

import pytest

from appliance.ondemand import OnDemandService

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"queue_num": 65536}, "ondemand.queue: 65536 is outside 0-65535"),
        ({"queue_num": 1, "workers": 0}, "ondemand.workers: 0 is not at least 1"),
    ],
)
def test_service_refuses_bad_arguments_before_touching_the_kernel(
    kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        OnDemandService(None, retrieve=lambda spi, daddr: True, **kwargs)  # type: ignore[arg-type]

"""Test tiers.

Every test carries exactly one tier marker (``unit``, ``netns`` or ``lab``);
collection fails otherwise, so that no test silently escapes every tier.
``scripts/test`` runs the tiers one by one (see README).
"""

import os

import pytest

TIERS = ("unit", "netns", "lab")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    errors = []
    for item in items:
        tiers = [t for t in TIERS if item.get_closest_marker(t)]
        if len(tiers) != 1:
            errors.append(f"{item.nodeid}: needs exactly one tier marker, has {tiers or 'none'}")
    if errors:
        raise pytest.UsageError("\n".join(errors))


@pytest.fixture
def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (run it through scripts/test)")

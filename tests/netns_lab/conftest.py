"""The lab's leak guard: after the session, nothing of any lab run this session made remains."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# pytest puts tests/ on sys.path (rootdir conftest, "prepend" import mode), where
# this directory looks like a namespace package called netns_lab; the editable
# install's finder comes after it.  The repo root first makes `import netns_lab`
# find the real package.
_REPO = str(Path(__file__).resolve().parents[2])
if sys.path[:1] != [_REPO]:
    sys.path.insert(0, _REPO)
if getattr(sys.modules.get("netns_lab"), "__file__", "") is None:
    del sys.modules["netns_lab"]

import netns_lab  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def no_lab_leftovers_after_session() -> Iterator[None]:
    yield
    # Runs made in this process, plus those the tests made in child processes
    # (they register the run ids they saw).
    left = {
        run_id: found
        for run_id in set(netns_lab.CREATED_RUN_IDS)
        if any((found := netns_lab.leftovers(run_id)).values())
    }
    assert not left, f"lab runs left things behind: {left}"

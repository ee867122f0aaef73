"""run_in_netns: the work runs inside the namespace; the caller never moves."""

import os

import pytest

from appliance.errors import KernelError, UsageError
from appliance.nft.netns import netns_path, run_in_netns

pytestmark = pytest.mark.netns


def current_netns() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def test_work_runs_inside_and_the_caller_stays_home(netns_name: str) -> None:
    home = current_netns()
    target = os.stat(netns_path(netns_name)).st_ino
    inside = run_in_netns(netns_name, current_netns)
    assert inside == f"net:[{target}]"
    assert inside != home
    assert current_netns() == home


def test_errors_from_the_work_propagate_and_the_caller_stays_home(netns_name: str) -> None:
    home = current_netns()

    def fail() -> None:
        raise KernelError("inside")

    with pytest.raises(KernelError, match="inside"):
        run_in_netns(netns_name, fail)
    assert current_netns() == home


def test_none_means_the_callers_namespace() -> None:
    assert run_in_netns(None, current_netns) == current_netns()


@pytest.mark.parametrize("name", ["", "a/b", "..", "."])
def test_bad_names_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError):
        run_in_netns(name, current_netns)


def test_absent_namespace_is_a_kernel_error() -> None:
    with pytest.raises(KernelError, match="does not exist"):
        run_in_netns("iha-0000-absent", current_netns)

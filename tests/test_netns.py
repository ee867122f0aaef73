"""appliance.netns: one naming rule; work runs inside the namespace, the caller never moves."""

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from appliance.errors import KernelError, UsageError
from appliance.netns import (
    create_netns,
    netns_path,
    remove_netns,
    run_in_netns,
    temporary_netns,
)

SO_NETNS_COOKIE = 71
"""``getsockopt`` naming the namespace a socket belongs to (Linux 5.14; not in Python 3.11)."""

BAD_NAMES = ["", "a/b", "/run/netns/x", "..", ".", "a\0b"]


def current_netns() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def netns_cookie(sock: socket.socket) -> int:
    return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


# --- the naming rule (no root) -------------------------------------------------------------


@pytest.mark.unit
def test_a_name_is_a_file_under_run_netns() -> None:
    assert netns_path("iha-1234-gw1") == "/run/netns/iha-1234-gw1"


@pytest.mark.unit
@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_usage_errors_naming_the_name(name: str) -> None:
    with pytest.raises(UsageError, match="is not a network namespace name") as info:
        netns_path(name)
    assert repr(name) in str(info.value)


@pytest.mark.unit
@pytest.mark.parametrize("name", BAD_NAMES)
def test_every_entry_point_refuses_bad_names_before_touching_the_kernel(name: str) -> None:
    for use in (
        lambda: run_in_netns(name, current_netns),
        lambda: create_netns(name),
        lambda: remove_netns(name),
    ):
        with pytest.raises(UsageError):
            use()


@pytest.mark.unit
def test_none_means_the_callers_namespace_and_thread() -> None:
    def work() -> tuple[threading.Thread, str]:
        return threading.current_thread(), current_netns()

    assert run_in_netns(None, work) == (threading.current_thread(), current_netns())


# --- in a real namespace (root) ------------------------------------------------------------


@pytest.fixture
def netns_name(require_root: None) -> Iterator[str]:
    """A fresh empty namespace with a unique name, made and removed by ``appliance.netns``."""
    with temporary_netns("netns-test") as name:
        yield name


@pytest.mark.netns
def test_work_runs_inside_and_the_caller_stays_home(netns_name: str) -> None:
    home = current_netns()
    target = os.stat(netns_path(netns_name)).st_ino
    inside = run_in_netns(netns_name, current_netns)
    assert inside == f"net:[{target}]"
    assert inside != home
    assert current_netns() == home


@pytest.mark.netns
def test_a_socket_opened_inside_stays_in_the_namespace(netns_name: str) -> None:
    def udp() -> socket.socket:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    with (
        run_in_netns(netns_name, udp) as inside,
        run_in_netns(netns_name, udp) as again,
        udp() as here,
    ):
        assert netns_cookie(inside) == netns_cookie(again)
        assert netns_cookie(inside) != netns_cookie(here)


@pytest.mark.netns
def test_errors_from_the_work_propagate_and_the_caller_stays_home(netns_name: str) -> None:
    home = current_netns()

    def fail() -> None:
        raise KernelError("inside")

    with pytest.raises(KernelError, match="inside"):
        run_in_netns(netns_name, fail)
    assert current_netns() == home


@pytest.mark.netns
def test_absent_namespace_is_a_kernel_error_naming_it(require_root: None) -> None:
    with pytest.raises(KernelError, match="network namespace 'iha-0000-absent' does not exist"):
        run_in_netns("iha-0000-absent", current_netns)


@pytest.mark.netns
def test_temporary_namespace_is_made_and_always_removed(require_root: None) -> None:
    with pytest.raises(RuntimeError, match="body"), temporary_netns("netns-test") as name:
        assert name.startswith("iha-") and name.endswith("-netns-test")
        assert os.path.exists(netns_path(name))
        raise RuntimeError("body")
    assert not os.path.exists(netns_path(name))


@pytest.mark.netns
def test_creating_an_existing_namespace_is_a_kernel_error(netns_name: str) -> None:
    with pytest.raises(KernelError, match=f"network namespace '{netns_name}' already exists"):
        create_netns(netns_name)


@pytest.mark.netns
def test_removing_an_absent_namespace_is_a_kernel_error(require_root: None) -> None:
    with pytest.raises(KernelError, match="network namespace 'iha-0000-absent' does not exist"):
        remove_netns("iha-0000-absent")

"""appliance.netns: one naming rule; work runs inside the namespace, the caller never moves."""

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from appliance.errors import KernelError, UsageError
from appliance.netns import (
    NetnsWorker,
    create_netns,
    name_this_thread,
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


def comm_of(native_id: int | None) -> str:
    with open(f"/proc/self/task/{native_id}/comm") as f:
        return f.read().strip()


def thread_alive(native_id: int | None) -> bool:
    return os.path.exists(f"/proc/self/task/{native_id}")


def tasks_soon(expected: set[str], timeout: float = 2.0) -> set[str]:
    """This process's tasks once they are ``expected`` (or when ``timeout`` is over): a joined
    thread's task leaves /proc a moment after ``join`` returns."""
    deadline = time.monotonic() + timeout
    while (tasks := set(os.listdir("/proc/self/task"))) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return tasks


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


@pytest.mark.unit
def test_a_worker_runs_every_call_in_its_one_named_thread() -> None:
    with NetnsWorker(None, "ipsec-ha-test-worker") as worker:
        seen = {worker.run(threading.get_native_id) for _ in range(5)}
        assert seen == {worker.native_id} and worker.native_id != threading.get_native_id()
        assert worker.run(lambda: threading.current_thread().name) == "ipsec-ha-test-worker"
        assert comm_of(worker.native_id) == "ipsec-ha-test-w"  # /proc keeps 15 bytes
        assert worker.run(current_netns) == current_netns()  # None: the maker's namespace


@pytest.mark.unit
def test_a_workers_errors_reach_the_caller_and_it_carries_on() -> None:
    def fail() -> None:
        raise KeyError("inside")

    with NetnsWorker(None, "ipsec-ha-test") as worker:
        with pytest.raises(KeyError, match="inside"):
            worker.run(fail)
        assert worker.run(lambda: 7) == 7


@pytest.mark.unit
def test_work_may_hand_more_work_to_its_own_worker() -> None:
    with NetnsWorker(None, "ipsec-ha-test") as worker:
        assert worker.run(lambda: worker.run(lambda: 3) + 1) == 4


@pytest.mark.unit
def test_a_closed_worker_has_no_thread_and_refuses_work() -> None:
    worker = NetnsWorker(None, "ipsec-ha-test")
    tid = worker.native_id
    assert thread_alive(tid)
    before = set(os.listdir("/proc/self/task"))
    worker.close()
    worker.close()  # idempotent
    assert tasks_soon(before - {str(tid)}) == before - {str(tid)}
    with pytest.raises(ValueError, match="'ipsec-ha-test' is closed"):
        worker.run(lambda: None)


@pytest.mark.unit
def test_a_thread_is_named_in_proc_by_its_first_15_bytes() -> None:
    comms: list[str] = []

    def named() -> None:
        name_this_thread("ipsec-ha-metrics-extra")
        comms.append(comm_of(threading.get_native_id()))

    thread = threading.Thread(target=named)
    thread.start()
    thread.join()
    assert comms == ["ipsec-ha-metric"]


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


@pytest.mark.netns
def test_a_worker_works_inside_and_the_caller_stays_home(netns_name: str) -> None:
    home = current_netns()
    target = os.stat(netns_path(netns_name)).st_ino
    with NetnsWorker(netns_name, "ipsec-ha-test") as worker:
        assert worker.run(current_netns) == f"net:[{target}]"
        assert worker.run(current_netns) == f"net:[{target}]"  # it stays there
        assert current_netns() == home

        def udp() -> socket.socket:
            return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

        with worker.run(udp) as inside, run_in_netns(netns_name, udp) as fresh:
            assert netns_cookie(inside) == netns_cookie(fresh)
    assert current_netns() == home


@pytest.mark.netns
def test_a_worker_of_an_absent_namespace_is_a_kernel_error_and_leaves_no_thread(
    require_root: None,
) -> None:
    before = set(os.listdir("/proc/self/task"))
    with pytest.raises(KernelError, match="network namespace 'iha-0000-absent' does not exist"):
        NetnsWorker("iha-0000-absent", "ipsec-ha-test")
    assert tasks_soon(before) == before


@pytest.mark.netns
def test_a_worker_that_cannot_enter_is_a_kernel_error_and_its_thread_ends(
    require_root: None,
) -> None:
    name = f"iha-{os.getpid()}-not-a-netns"
    path = netns_path(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w"):
        pass  # a plain file: it opens, but setns refuses it
    try:
        before = set(os.listdir("/proc/self/task"))
        with pytest.raises(KernelError, match=f"cannot enter network namespace '{name}'"):
            NetnsWorker(name, "ipsec-ha-test")
        assert tasks_soon(before) == before
    finally:
        os.unlink(path)


@pytest.mark.netns
def test_a_worker_knows_when_its_name_no_longer_stands_for_its_namespace(
    require_root: None,
) -> None:
    name = f"iha-{os.getpid()}-current"
    create_netns(name)
    try:
        worker = NetnsWorker(name, "ipsec-ha-test")
    finally:
        remove_netns(name)
    with worker:
        assert not worker.is_current()  # removed: the worker alone keeps it alive
        create_netns(name)
        try:
            assert not worker.is_current()  # made anew: another namespace
            with NetnsWorker(name, "ipsec-ha-test") as fresh:
                assert fresh.is_current()
                assert fresh.run(current_netns) != worker.run(current_netns)
        finally:
            remove_netns(name)
    with NetnsWorker(None, "ipsec-ha-test") as here:
        assert here.is_current()

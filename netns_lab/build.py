"""Build and remove the lab's namespaces, bridges, veths, addresses and routes with pyroute2.

Everything is created inside the run's namespaces: each veth pair is created
in a switch namespace with its peer placed directly in the host namespace
(IFLA_NET_NS_FD on the peer), so no interface ever appears in the root
namespace, even for an instant.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import time
from pathlib import Path

from pyroute2 import IPRoute, netns

from appliance.errors import LabError
from netns_lab.plan import (
    ADDRESSES,
    CLIENT_PROTECTED,
    GATEWAYS,
    HOSTS,
    ROUTES,
    SEGMENTS,
    LabPlan,
)

NETNS_DIR = Path("/run/netns")


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def existing_namespaces() -> set[str]:
    return set(netns.listnetns())


def write_sysctl(ns: str, key: str, value: str) -> None:
    """Write a per-namespace sysctl (``net.ipv4.ip_forward``) in namespace ``ns``."""
    path = Path("/proc/sys") / key.replace(".", "/")
    # /proc/sys/net resolves against the calling thread's namespace, so the
    # thread enters ``ns`` just for this write.
    netns.pushns(ns)
    try:
        path.write_text(value)
    finally:
        netns.popns()


def _link_index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LabError(f"interface {ifname} missing in namespace {ipr.status['netns']}")
    return int(found[0])


def build(plan: LabPlan, created: list[str]) -> None:
    """Create the whole topology of ``plan``.

    Appends each namespace to ``created`` as soon as it exists, so a caller's
    teardown removes exactly what was made even if this fails half way.
    """
    for name in plan.namespaces.values():
        if netns_path(name).exists():
            raise LabError(f"namespace {name} already exists (run id {plan.run_id} in use)")
        netns.create(name)
        created.append(name)

    for host in HOSTS:
        with IPRoute(netns=plan.ns(host)) as ipr:
            ipr.link("set", index=_link_index(ipr, "lo"), state="up")

    for segment in SEGMENTS:
        with IPRoute(netns=plan.ns(segment.bridge)) as sw:
            sw.link("set", index=_link_index(sw, "lo"), state="up")
            sw.link("add", ifname=segment.bridge, kind="bridge")
            bridge = _link_index(sw, segment.bridge)
            for host in plan.segment_hosts(segment):
                # switch port named after the host; the host side is the segment's ifname
                sw.link(
                    "add",
                    ifname=host,
                    kind="veth",
                    peer={"ifname": segment.ifname, "net_ns_fd": plan.ns(host)},
                )
                sw.link("set", index=_link_index(sw, host), master=bridge, state="up")
            sw.link("set", index=bridge, state="up")

    for host in HOSTS:
        with IPRoute(netns=plan.ns(host)) as ipr:
            for segment in SEGMENTS:
                if segment.name not in ADDRESSES[host]:
                    continue
                iface = ipaddress.ip_interface(ADDRESSES[host][segment.name])
                index = _link_index(ipr, segment.ifname)
                ipr.addr(
                    "add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen
                )
                ipr.link("set", index=index, state="up")
            if host == "client":
                # on lo: the host kernel has no dummy driver, and lo needs none
                index = _link_index(ipr, "lo")
                prot = ipaddress.ip_interface(CLIENT_PROTECTED)
                ipr.addr("add", index=index, address=str(prot.ip), prefixlen=prot.network.prefixlen)
            for dst, gateway in ROUTES.get(host, []):
                ipr.route("add", dst=dst, gateway=gateway)

    for gw in GATEWAYS:
        write_sysctl(plan.ns(gw), "net.ipv4.ip_forward", "1")
        # ESP tunnels forward traffic whose source sits behind another segment
        for conf in ("all", "default", "out0", "in0"):
            write_sysctl(plan.ns(gw), f"net.ipv4.conf.{conf}.rp_filter", "0")

    _wait_carrier(plan)


def _wait_carrier(plan: LabPlan, timeout: float = 10.0) -> None:
    """Wait until every host interface reports carrier (keepalived starts in FAULT otherwise)."""
    deadline = time.monotonic() + timeout
    for host in HOSTS:
        with IPRoute(netns=plan.ns(host)) as ipr:
            while True:
                states = [
                    link.get("IFLA_OPERSTATE")
                    for link in ipr.link("dump")
                    if link.get("IFLA_IFNAME") in ("out0", "in0")
                ]
                if all(s == "UP" for s in states):
                    break
                if time.monotonic() > deadline:
                    raise LabError(
                        f"links in {plan.ns(host)} not up after {timeout:.0f}s: {states}"
                    )
                time.sleep(0.05)


def namespace_pids(names: list[str]) -> list[int]:
    """Pids of the processes whose network namespace is one of ``names``."""
    wanted = set(names)
    try:
        by_ns = netns.ns_pids(nspath=str(NETNS_DIR))
    except OSError:
        return []
    pids = [int(pid) for name, plist in by_ns.items() if name in wanted for pid in plist]
    return [pid for pid in pids if pid != os.getpid()]


def wait_namespaces_empty(names: list[str], timeout: float) -> bool:
    """Wait until no process is left in ``names`` (notify hooks finishing); True if so."""
    deadline = time.monotonic() + timeout
    while True:
        pids = namespace_pids(names)
        for pid in pids:
            _reap(pid)
        if not namespace_pids(names):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def kill_namespace_processes(names: list[str], timeout: float = 5.0) -> list[int]:
    """SIGKILL every process whose network namespace is one of ``names``; return their pids.

    A namespace outlives its name while a process is inside it, so teardown
    first empties it.
    """
    pids = namespace_pids(names)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.02)
    return pids


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def remove_namespaces(names: list[str]) -> list[str]:
    """Remove the named namespaces that exist (their veths go with them); return the removed."""
    present = existing_namespaces()
    removed = []
    errors = []
    for name in names:
        if name not in present:
            continue
        try:
            netns.remove(name)
            removed.append(name)
        except OSError as exc:
            errors.append(f"{name}: {exc.strerror}")
    if errors:
        raise LabError(f"could not remove namespaces: {'; '.join(errors)}")
    return removed

"""A running lab: build, query, fail over and always tear down.

Use it as a context manager; teardown runs on normal exit, on an exception
and on SIGINT/SIGTERM (turned into ``LabInterrupted`` so ``finally`` runs)::

    with Lab.create() as lab:
        assert lab.vip_holder() == "gw1"
        lab.kill_keepalived("gw1")
        lab.wait_vip_holder("gw2", lab.failover_deadline())

``ipsec-ha-lab up`` builds a lab and leaves it running; ``Lab.attach(run_id)``
and the module functions ``status``/``down``/``down_all`` work on it from any
process through the run directory (``netns_lab.state``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

from pyroute2 import IPRoute

from appliance.errors import LabError
from appliance.notify import TransitionRecord, read_records
from netns_lab import build, keepalived
from netns_lab.plan import (
    ADDRESSES,
    GATEWAYS,
    LAB_NS_RE,
    PRIORITIES,
    SEGMENTS,
    SYNC_GROUP,
    LabPlan,
    new_run_id,
    vip_address,
)
from netns_lab.state import (
    KeepalivedRecord,
    RunState,
    make_run_dir,
    recorded_run_ids,
    run_base,
    run_dir,
)

DEFAULT_ADVERT_INT = 0.2
# How long a lab waits for keepalived and its notify hooks: generous, since
# each hook starts a Python interpreter, which is slow under TCG in the lab VM.
SETTLE_TIMEOUT = 240.0 if os.environ.get("IPSEC_HA_IN_LAB_VM") else 60.0

CREATED_RUN_IDS: list[str] = []
"""Run ids created by this process (the tests' leak check reads it)."""

T = TypeVar("T")


class LabInterrupted(BaseException):
    """SIGINT or SIGTERM arrived while a lab was up; the lab has been torn down."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def teardown_on_signals() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into ``LabInterrupted`` so that cleanup code runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    owner = os.getpid()

    def raise_interrupted(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            # A child forked by pyroute2 (it forks to open sockets in a
            # namespace) inherits this handler; it must just exit, never
            # unwind into the owner's teardown code.
            os._exit(128 + signum)
        raise LabInterrupted(signum)

    previous = {s: signal.signal(s, raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while tearing down; they arrive once it is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def wait_for(
    what: str, predicate: Callable[[], T | None], timeout: float, interval: float = 0.05
) -> T:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


class Lab:
    """One lab run: namespaces client, gw1, gw2, server (+ switches) and keepalived."""

    def __init__(self, state: RunState, procs: dict[str, subprocess.Popen[bytes]] | None = None):
        self.state = state
        self.plan = LabPlan(state.run_id)
        self._procs = procs or {}
        self._torn_down = False

    # -- life cycle ----------------------------------------------------------
    @classmethod
    def create(
        cls,
        advert_int: float = DEFAULT_ADVERT_INT,
        start_keepalived: bool = True,
        run_id: str | None = None,
        wait_notify: bool = True,
    ) -> Lab:
        """Build a lab; on any failure (or signal) everything made so far is removed.

        With ``wait_notify`` it returns once both gateways' notify hooks have
        recorded their initial state; without, once gw1 holds the VIPs (the
        lab VM runs hooks very slowly, and tests of the data path need only
        the VIPs).
        """
        with teardown_on_signals():
            plan = LabPlan(run_id or new_run_id())
            directory = make_run_dir(plan.run_id)
            CREATED_RUN_IDS.append(plan.run_id)
            state = RunState(
                run_id=plan.run_id,
                run_dir=str(directory),
                namespaces=plan.namespaces,
                addresses=ADDRESSES,
                vips={s.name: s.vip for s in SEGMENTS},
                advert_int=advert_int,
                owner_pid=os.getpid(),
            )
            lab = cls(state)
            try:
                state.save()
                created: list[str] = []
                try:
                    build.build(plan, created)
                finally:
                    # whatever exists is recorded, so `ipsec-ha-lab down` can find it
                    state.namespaces = {r: n for r, n in plan.namespaces.items() if n in created}
                    state.save()
                if start_keepalived:
                    lab._start_gateways(wait_notify)
            except BaseException:
                lab.teardown()
                raise
            return lab

    @classmethod
    def attach(cls, run_id: str) -> Lab:
        """A handle on a lab built by another process (``ipsec-ha-lab up``)."""
        return cls(RunState.load(run_id))

    def __enter__(self) -> Lab:
        self._signals = teardown_on_signals()
        self._signals.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.teardown()
        finally:
            self._signals.__exit__(None, None, None)

    def teardown(self) -> None:
        """Stop keepalived, empty and remove the namespaces, remove the run dir."""
        if self._torn_down:
            return
        with signals_deferred():
            _teardown(self.state, self._procs)
            self._torn_down = True

    # -- names and commands --------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.state.run_id

    @property
    def run_dir(self) -> Path:
        return Path(self.state.run_dir)

    def ns(self, host: str) -> str:
        """The namespace name of a host (client, gw1, gw2, server) or switch (swout, swin)."""
        return self.plan.ns(host)

    @contextlib.contextmanager
    def ipr(self, host: str) -> Iterator[Any]:
        """A pyroute2 ``IPRoute`` inside the host's namespace."""
        with IPRoute(netns=self.ns(host)) as ipr:
            yield ipr

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run in the host's network namespace."""
        return ["nsenter", f"--net={build.netns_path(self.ns(host))}", "--", *argv]

    def exec(
        self,
        host: str,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the host's namespace (``input`` on its stdin) and capture its output."""
        result = subprocess.run(
            self.command(host, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=input,
        )
        if check and result.returncode != 0:
            # only the program name: arguments may carry key material
            raise LabError(
                f"{argv[0]} in {host} failed (exit {result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    # -- VRRP ----------------------------------------------------------------
    def addresses(self, host: str) -> set[str]:
        """IPv4 addresses (with prefix) configured in the host's namespace."""
        with self.ipr(host) as ipr:
            return {f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.addr("dump", family=2)}

    def vip_holders(self) -> dict[str, list[str]]:
        """Segment -> the gateways that have its VIP configured right now."""
        addrs = {gw: self.addresses(gw) for gw in GATEWAYS}
        return {s.name: [gw for gw in GATEWAYS if s.vip in addrs[gw]] for s in SEGMENTS}

    def vip_holder(self) -> str | None:
        """The one gateway holding every VIP, or None (nobody, split, or both)."""
        holders = self.vip_holders()
        sets = {tuple(h) for h in holders.values()}
        if len(sets) == 1:
            (only,) = sets
            if len(only) == 1:
                return only[0]
        return None

    def wait_vip_holder(self, gateway: str, timeout: float) -> str:
        """Wait until ``gateway`` alone holds every VIP."""
        return wait_for(
            f"{gateway} to hold the VIPs alone (now: {self.vip_holders()})",
            lambda: gateway if self.vip_holder() == gateway else None,
            timeout,
        )

    def failover_deadline(self, margin: float = 3.0) -> float:
        """Seconds within which a backup takes over: VRRP dead interval plus a margin.

        The margin covers scheduling and netlink on a loaded machine; it is
        not a performance claim.
        """
        backup_priority = min(PRIORITIES.values())
        return keepalived.dead_interval(self.state.advert_int, backup_priority) + margin

    def transitions(self, gateway: str | None = None) -> list[TransitionRecord]:
        """The notify records of one gateway (or all, by monotonic time)."""
        gateways = [gateway] if gateway else list(GATEWAYS)
        records: list[TransitionRecord] = []
        for gw in gateways:
            records += read_records(keepalived.KeepalivedFiles.in_dir(self.run_dir, gw).notify_log)
        return sorted(records, key=lambda r: r.monotonic)

    def wait_transition(
        self,
        gateway: str,
        state: str,
        name: str = SYNC_GROUP,
        after: float = 0.0,
        timeout: float = SETTLE_TIMEOUT,
    ) -> TransitionRecord:
        """Wait for ``gateway``'s notify log to show ``name`` entering ``state`` after ``after``."""

        def found() -> TransitionRecord | None:
            for r in self.transitions(gateway):
                if r.name == name and r.state == state and r.monotonic >= after:
                    return r
            return None

        try:
            return wait_for(f"{gateway} to record {name} {state}", found, timeout)
        except LabError as exc:
            files = keepalived.KeepalivedFiles.in_dir(self.run_dir, gateway)
            seen = [f"{r.name} {r.state}" for r in self.transitions(gateway)]
            raise LabError(
                f"{exc}; recorded: {seen}; hook stderr: {keepalived.tail(files.hook_stderr)}; "
                f"keepalived log: {keepalived.tail(files.log)}"
            ) from None

    def start_keepalived(self, gateway: str) -> int:
        """Start (or restart) keepalived in a gateway; returns its pid."""
        if gateway not in GATEWAYS:
            raise LabError(f"{gateway!r} is not a gateway ({', '.join(GATEWAYS)})")
        if self.keepalived_alive(gateway):
            raise LabError(f"keepalived already runs in {gateway}")
        files = keepalived.write_config(gateway, self.run_dir, self.state.advert_int)
        # A killed keepalived leaves its pid files; if a new process got one of
        # those pids (quick in the small VM), keepalived would refuse to start
        # ("daemon is already running"). It is not running: they are stale.
        for pidfile in (files.pidfile, files.vrrp_pidfile, files.checkers_pidfile):
            pidfile.unlink(missing_ok=True)
        proc = keepalived.spawn(files, self.ns(gateway))
        self._procs[gateway] = proc
        self.state.keepalived[gateway] = KeepalivedRecord(
            pid=proc.pid,
            config=str(files.config),
            pidfile=str(files.pidfile),
            vrrp_pidfile=str(files.vrrp_pidfile),
            log=str(files.log),
            notify_log=str(files.notify_log),
        )
        self.state.save()
        return proc.pid

    def keepalived_alive(self, gateway: str) -> bool:
        record = self.state.keepalived.get(gateway)
        return bool(record) and keepalived.is_lab_keepalived(record.pid, self._marker)  # type: ignore[union-attr]

    def kill_keepalived(self, gateway: str, sig: int = signal.SIGTERM, wait: bool = True) -> None:
        """Stop a gateway's keepalived.

        SIGTERM: keepalived runs its STOP notifications and removes its VIPs.
        SIGKILL: a crash; the whole process group dies at once, no STOP is
        recorded and the dead gateway keeps the VIP addresses configured
        (nobody removes them), as a crashed host's kernel would.
        With ``wait=False`` only the signal is sent (to time a failover from
        that moment); call ``wait_keepalived_exit`` afterwards.
        """
        record = self.state.keepalived.get(gateway)
        if record is None or not keepalived.send_signal(record.pid, self._marker, sig):
            raise LabError(f"keepalived is not running in {gateway}")
        if wait:
            self.wait_keepalived_exit(gateway)

    def wait_keepalived_exit(self, gateway: str, timeout: float = 10.0) -> None:
        """Wait until a signalled keepalived has exited (SIGKILL after ``timeout``)."""
        record = self.state.keepalived.get(gateway)
        if record is not None:
            keepalived.wait_exit(record.pid, self._marker, timeout)
        proc = self._procs.pop(gateway, None)
        if proc is not None:
            proc.wait(timeout=10)

    @property
    def _marker(self) -> str:
        return self.state.run_dir + "/"

    def _start_gateways(self, wait_notify: bool) -> None:
        # gw1 first, alone, so that it deterministically becomes master
        # (nopreempt: with a simultaneous start either could win).
        for gw in GATEWAYS:
            files = keepalived.write_config(gw, self.run_dir, self.state.advert_int)
            keepalived.check_config(files.config, self.ns(gw))
        self.start_keepalived("gw1")
        self.wait_vip_holder("gw1", SETTLE_TIMEOUT)
        if wait_notify:
            self.wait_settled("gw1", "MASTER")
        self.start_keepalived("gw2")
        if wait_notify:
            self.wait_settled("gw2", "BACKUP")
        else:
            # gw2 has heard gw1 once its dead interval passed without a takeover
            time.sleep(keepalived.dead_interval(self.state.advert_int, PRIORITIES["gw2"]))
            self.wait_vip_holder("gw1", SETTLE_TIMEOUT)

    def wait_settled(self, gateway: str, state: str, after: float = 0.0) -> None:
        """Wait until the group and every instance of ``gateway`` recorded ``state``.

        keepalived runs one hook per instance and one per group, in parallel,
        so the records land in any order.
        """
        for name in (SYNC_GROUP, *(s.instance for s in SEGMENTS)):
            self.wait_transition(gateway, state, name=name, after=after)


def _teardown(state: RunState, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    marker = state.run_dir + "/"
    problems = []
    # SIGTERM to each keepalived parent (recorded or found): it sends
    # priority 0 and runs its STOP notifications, as an operator's stop would.
    parents = {r.pid for r in state.keepalived.values()}
    parents |= {p for p in keepalived.lab_keepalived_pids(marker) if keepalived.is_group_leader(p)}
    for pid in sorted(parents):
        keepalived.stop(pid, marker, signal.SIGTERM)
    for pid in keepalived.lab_keepalived_pids(marker):
        keepalived.stop(pid, marker, signal.SIGKILL)
    for proc in procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    names = list(state.namespaces.values())
    # notify hooks still writing their STOP records get a moment to finish
    build.wait_namespaces_empty(names, timeout=10.0)
    build.kill_namespace_processes(names)
    try:
        build.remove_namespaces(names)
    except LabError as exc:
        problems.append(str(exc))
    shutil.rmtree(state.run_dir, ignore_errors=True)
    if Path(state.run_dir).exists():
        problems.append(f"run directory {state.run_dir} remains")
    if problems:
        raise LabError("; ".join(problems))


# -- whole-run operations for the CLI and the tests --------------------------


def down(run_id: str) -> dict[str, Any]:
    """Remove a lab run by id (built by any process).

    Works without the run's record too (a run killed before it wrote one, or
    whose directory was removed): then it removes the ``iha-<run id>-*``
    namespaces and the keepalived processes started from its run directory.
    """
    try:
        state = RunState.load(run_id)
    except LabError:
        if not leftovers(run_id)["namespaces"] and not leftovers(run_id)["keepalived_pids"]:
            raise
        plan = LabPlan(run_id)
        state = RunState(
            run_id=run_id,
            run_dir=str(run_dir(run_id)),
            namespaces=plan.namespaces,
            addresses={},
            vips={},
            advert_int=DEFAULT_ADVERT_INT,
            owner_pid=0,
        )
    before = set(state.namespaces.values()) & build.existing_namespaces()
    with signals_deferred():
        _teardown(state, {})
    return {"run_id": run_id, "removed_namespaces": sorted(before)}


def leftovers(run_id: str | None = None) -> dict[str, list[Any]]:
    """What lab runs left behind (all runs, or one): namespaces, keepalived pids, run dirs."""
    namespaces = sorted(
        n
        for n in build.existing_namespaces()
        if (m := LAB_NS_RE.match(n)) and (run_id is None or m["run_id"] == run_id)
    )
    marker = str(run_dir(run_id) if run_id else run_base()) + "/"
    return {
        "namespaces": namespaces,
        "keepalived_pids": keepalived.lab_keepalived_pids(marker),
        "run_dirs": [r for r in recorded_run_ids() if run_id is None or r == run_id],
    }


def down_all() -> dict[str, Any]:
    """Remove every lab run: recorded ones, and namespaces/keepalived of unrecorded ones."""
    removed: list[str] = []
    errors: list[str] = []
    with signals_deferred():
        for run_id in recorded_run_ids():
            try:
                removed += down(run_id)["removed_namespaces"]
            except LabError as exc:
                errors.append(str(exc))
                shutil.rmtree(run_dir(run_id), ignore_errors=True)
        marker = str(run_base()) + "/"
        for pid in keepalived.lab_keepalived_pids(marker):
            keepalived.stop(pid, marker, signal.SIGKILL)
        stray = sorted(n for n in build.existing_namespaces() if LAB_NS_RE.match(n))
        build.kill_namespace_processes(stray)
        try:
            removed += build.remove_namespaces(stray)
        except LabError as exc:
            errors.append(str(exc))
    if errors:
        raise LabError("; ".join(errors))
    return {"removed_namespaces": sorted(removed), "left": leftovers()}


def status(run_id: str) -> dict[str, Any]:
    """What a run looks like now: namespaces, VIP holders, keepalived, transitions."""
    lab = Lab.attach(run_id)
    present = build.existing_namespaces()
    namespaces = {
        role: {"name": n, "present": n in present} for role, n in lab.state.namespaces.items()
    }
    holders: dict[str, list[str]] = {}
    if all(lab.ns(gw) in present for gw in GATEWAYS):
        holders = lab.vip_holders()
    return {
        "run_id": run_id,
        "run_dir": lab.state.run_dir,
        "advert_int": lab.state.advert_int,
        "namespaces": namespaces,
        "vips": lab.state.vips,
        "vip_holders": holders,
        "keepalived": {
            gw: {"pid": rec.pid, "alive": lab.keepalived_alive(gw)}
            for gw, rec in lab.state.keepalived.items()
        },
        "transitions": [r.__dict__ for r in lab.transitions()],
    }


def list_runs() -> list[str]:
    return recorded_run_ids()


def vip(segment: str) -> str:
    """The VIP address of a segment (``outside``/``inside``), without prefix."""
    for s in SEGMENTS:
        if s.name == segment:
            return vip_address(s)
    raise LabError(f"no segment {segment!r}")

"""Metrics and readiness in the lab: a takeover moves the counters; a standby cut from its
stores is not ready, and keepalived lowers its priority (issue 17, lab tier).

Run as root on a kernel with ESP (the lab VM)::

    python -m netns_lab.scenarios.metrics_readiness [--mode hot|cold] [--json]

What happens
------------
1. A lab with the appliance on both gateways (``netns_lab.services``), each
   daemon serving ``/metrics`` on its outside address (scraped from the
   client over the outside segment). gw2's keepalived tracks
   ``ipsec-ha status --ready`` (``keepalived.enable_ready_check``): while
   the check fails, both of gw2's instances run at priority 100 - 60 = 40.
2. The tunnel client <-> VIP is keyed on gw1 (``netns_lab.tunnel``); gw1's
   daemon publishes its SAs to both stores, and a hot standby gw2 installs
   them.
3. gw2 is ready: ``--ready`` exits 0 and keepalived runs it at 100.
4. gw2's path to the stores is cut: an nftables rule in gw2's namespace
   drops what gw2 sends to the store port (to its own store and to gw1's);
   VRRP is untouched, gw1 stays master. ``--ready`` on gw2 exits 1 naming the
   unreachable stores, gw2's ``ipsec_ha_store_up`` is 0 for both, and
   keepalived's log shows gw2's priority lowered to 40.
5. The rule goes: gw2 is ready again, at priority 100.
6. gw1 crashes (SIGKILL to its keepalived and its daemon) and gw2 takes
   over. Scraped before and after, gw2's
   ``ipsec_ha_takeovers_total{result="ok"}`` and
   ``ipsec_ha_takeover_duration_seconds_count`` moved by one, the duration's
   sum grew, and ``ipsec_ha_last_takeover_step_seconds`` has one sample per
   step of the plan that gw2's status file reports.

keepalived's effective priority is read from its log (``keepalived.
effective_priorities``): a BACKUP sends no adverts, so the wire does not
carry a standby's priority.

In the lab VM the ``ipsec-ha`` CLI takes minutes to start under TCG, longer
than the check's interval; there keepalived runs ``keepalived/ready-check``
and the scenario ``python -m appliance.readycheck``: the same check, output
and exit status without the CLI's start-up (docs/lab.md). On the host both
run the CLI.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from appliance.errors import LabError
from netns_lab import keepalived, tunnel
from netns_lab.lab import SETTLE_TIMEOUT, Lab, wait_for
from netns_lab.plan import GATEWAYS, INSIDE, OUTSIDE, PRIORITIES, address_of, vip_address
from netns_lab.scenarios.narration import Narration, run_from_command_line
from netns_lab.services import STORE_PORT, Services, SyncSettings

METRICS_PORT = 9641
STANDBY = "gw2"
ACTIVE = "gw1"
READY_WEIGHT = -60
VM_READY_INTERVAL_S = 20
"""The check's interval in the lab VM, longer than one Python start-up there."""
# What cuts gw2 from every store and nothing else: its requests to the store port.
_CUT_STORES = f"""table inet iha_cut_stores {{
    chain output {{
        type filter hook output priority 0; policy accept;
        udp dport {STORE_PORT} drop
    }}
}}
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

"""A stand-in for ``ipsec-ha status --ready`` (see its docstring), run by this interpreter."""


def parse_metrics(text: str) -> Samples:
    """A ``/metrics`` answer: (sample name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels; 0 when absent (a counter not yet counted)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``label``'s value -> sample value, over every sample called ``name``."""
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


@dataclass
class Readiness:
    """gw2 as ``--ready`` and keepalived saw it at one point of the run."""

    exit_status: int
    reasons: list[str]
    priorities: dict[str, int]
    """Instance -> effective priority (keepalived's log)."""
    store_up: dict[str, float] = field(default_factory=dict)
    """Store -> ``ipsec_ha_store_up`` from gw2's metrics."""
    vip_holder: str | None = None


@dataclass
class TakeoverMetrics:
    """gw2's takeover metrics before and after it took over from gw1."""

    takeovers_ok: tuple[float, float]
    takeovers_failed: tuple[float, float]
    duration_count: tuple[float, float]
    duration_sum: tuple[float, float]
    steps: dict[str, float]
    """``ipsec_ha_last_takeover_step_seconds`` after the takeover: step -> seconds."""
    timeline: list[str]
    """The steps of the takeover's plan, as gw2's status file reports them."""
    role: dict[str, float]
    held_sas: float
    store_sas: dict[str, float]


@dataclass
class Outcome:
    """What the scenario measured."""

    mode: str
    tunnel: dict[str, int]
    """The tunnel's SPIs (empty: run without a tunnel, on a kernel without ESP)."""
    configured_priority: int
    lowered_priority: int
    ready: Readiness
    cut: Readiness
    restored: Readiness
    takeover: TakeoverMetrics
    events: list[tuple[float, str]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Scenario(Narration):
    """One run; see the module docstring. ``say`` gets a line per step."""

    def __init__(
        self,
        mode: str = "hot",
        *,
        keyed: bool = True,
        quick_ready: bool | None = None,
        advert_int: float = 1.0,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        """``quick_ready``: keepalived's check and the scenario's verdicts run
        ``appliance.readycheck`` instead of the ``ipsec-ha`` CLI (None: in the lab VM only)."""
        if mode not in ("cold", "hot"):
            raise ValueError(f"mode must be cold or hot, not {mode!r}")
        super().__init__(say)
        self.mode, self.keyed, self.advert_int = mode, keyed, advert_int
        self.in_vm = bool(os.environ.get("IPSEC_HA_IN_LAB_VM"))
        self.quick_ready = self.in_vm if quick_ready is None else quick_ready
        self.ready_program: tuple[str, ...] = (
            (sys.executable, "-m", "appliance.readycheck") if self.quick_ready else ()
        )
        """The scenario's own verdicts (``Services.ready``)."""
        self.configured = PRIORITIES[STANDBY]
        self.lowered = self.configured + READY_WEIGHT

    def run(self) -> Outcome:
        with Lab.create(advert_int=self.advert_int, start_keepalived=False) as lab:
            services = Services(lab, SyncSettings(mode=self.mode, metrics_port=METRICS_PORT))
            try:
                return self._run(lab, services)
            finally:
                services.stop()

    def _run(self, lab: Lab, services: Services) -> Outcome:
        self._start(lab, services)
        self.event(
            f"lab {lab.run_id} up: gw1 active, gw2 {self.mode} standby; metrics on "
            f":{METRICS_PORT}; gw2's keepalived tracks ipsec-ha status --ready"
        )
        spis = {}
        if self.keyed:
            keyed = tunnel.establish(lab, ACTIVE)
            spis = {"spi_in": keyed.spi_in, "spi_out": keyed.spi_out}
            shown = ", ".join(f"0x{spi:08x}" for spi in spis.values())
            self.event(f"tunnel keyed on client and gw1: SPIs {shown}")
        if self.keyed and self.mode == "hot":
            wait_for(
                "gw2 to pre-install the SAs (hot standby)",
                lambda: len(tunnel.sa_stats(lab, STANDBY)) >= 2,
                SETTLE_TIMEOUT,
                0.2,
            )
            self.event("gw2 holds the SAs pre-installed")

        ready = self._wait_readiness(lab, services, ready=True)
        self.event(f"gw2 ready; keepalived runs it at {self.configured}")

        since = len(self._keepalived_log(lab))
        lab.exec(STANDBY, ["nft", "-f", "-"], input=_CUT_STORES)
        self.event(f"gw2's path to the stores cut (udp dport {STORE_PORT} dropped on output)")
        cut = self._wait_readiness(lab, services, ready=False, since=since)
        self.event(
            f"gw2 not ready ({'; '.join(cut.reasons)}); keepalived runs it at {self.lowered}"
        )

        since = len(self._keepalived_log(lab))
        lab.exec(STANDBY, ["nft", "delete", "table", "inet", "iha_cut_stores"])
        self.event("gw2's path to the stores restored")
        restored = self._wait_readiness(lab, services, ready=True, since=since)
        self.event(f"gw2 ready again, at {self.configured}")

        takeover = self._take_over(lab, services)
        return Outcome(
            mode=self.mode,
            tunnel=spis,
            configured_priority=self.configured,
            lowered_priority=self.lowered,
            ready=ready,
            cut=cut,
            restored=restored,
            takeover=takeover,
            events=self.events,
        )

    # -- steps ------------------------------------------------------------------------

    def _start(self, lab: Lab, services: Services) -> None:
        """The stores and daemons, then keepalived in the lab's order (gw1 alone first, so
        that it is master), gw2's with the readiness check.

        The daemons start first: under TCG a Python start-up takes 5 to 20 s
        (most of it reading files over 9p), and gw2's check starts one per
        run. keepalived starts a run every interval whether or not the last
        one ended, so there the interval is longer than a run and the timeout
        bounds the runs alive at once to three: at 2 s they piled up until
        the VM did nothing else (a run that times out counts as a failure).
        The check reacts to one result instead of two, which keeps the run
        short.
        """
        in_vm = self.in_vm
        check = keepalived.ReadyCheck(
            keepalived.KeepalivedFiles.in_dir(lab.run_dir, STANDBY).status,
            weight=READY_WEIGHT,
            interval_s=VM_READY_INTERVAL_S if in_vm else 2,
            timeout_s=3 * VM_READY_INTERVAL_S if in_vm else 10,
            fall=1 if in_vm else 2,
            rise=1 if in_vm else 2,
            # The hook runs `python -m appliance.readycheck` with keepalived's IPSEC_HA_PYTHON
            # (keepalived runs a program by its real path: a venv's python would lose the venv).
            program=(str(keepalived.READY_HOOK),) if self.quick_ready else (),
        )
        keepalived.enable_ready_check(lab.run_dir, STANDBY, check)
        for gw in GATEWAYS:
            files = keepalived.write_config(gw, lab.run_dir, lab.state.advert_int)
            keepalived.check_config(files.config, lab.ns(gw))
        for gw in GATEWAYS:
            services.start_store(gw)
        for gw in GATEWAYS:
            services.start_daemon(gw)
        for gw in GATEWAYS:
            services.wait_role(gw, ("init",))  # its first status: the daemon runs
        lab.start_keepalived(ACTIVE)
        lab.wait_vip_holder(ACTIVE, SETTLE_TIMEOUT)
        services.wait_role(ACTIVE, ("active",))
        lab.start_keepalived(STANDBY)
        services.wait_role(STANDBY, ("standby",))
        lab.wait_vip_holder(ACTIVE, SETTLE_TIMEOUT)

    @staticmethod
    def _keepalived_log(lab: Lab) -> str:
        log = keepalived.KeepalivedFiles.in_dir(lab.run_dir, STANDBY).log
        return log.read_text(errors="replace") if log.exists() else ""

    def _priorities(self, lab: Lab) -> dict[str, int]:
        return keepalived.effective_priorities(self._keepalived_log(lab), self.configured)

    def _wait_readiness(
        self, lab: Lab, services: Services, *, ready: bool, since: int = 0
    ) -> Readiness:
        """Until keepalived's check turned ``ready`` (or not) after offset ``since`` of gw2's
        keepalived log, its priority agrees, and ``--ready`` on gw2 agrees too (not
        ready: naming every store as unreachable, not some other reason a loaded VM may
        give for a moment)."""
        want_status = 0 if ready else 1
        want_priority = self.configured if ready else self.lowered
        want_result = f"VRRP_Script({keepalived.READY_SCRIPT}) " + (
            "succeeded" if ready else "failed"
        )
        stores = [f"store unreachable: {address_of(gw, INSIDE)}: " for gw in GATEWAYS]
        last: dict[str, Any] = {}

        def verdict() -> tuple[int, list[str]] | None:
            status, reasons = services.ready(STANDBY, self.ready_program)
            last["ready"] = (status, reasons)
            named = all(any(r.startswith(s) for r in reasons) for s in stores)
            return (status, reasons) if status == want_status and (ready or named) else None

        def priority() -> dict[str, int] | None:
            # the check's own verdict since the phase began (the priority alone could be
            # the configured one only because no run has finished yet)
            if want_result not in self._keepalived_log(lab)[since:]:
                return None
            now = self._priorities(lab)
            last["priorities"] = now
            return now if set(now.values()) == {want_priority} else None

        try:
            # keepalived's check is the same command: once the priority moved, the first
            # run here mostly agrees (each run is a Python start-up, slow in the VM)
            priorities = wait_for("gw2's keepalived priority", priority, SETTLE_TIMEOUT, 0.2)
            status, reasons = wait_for("gw2's --ready verdict", verdict, SETTLE_TIMEOUT, 0.5)
        except LabError as exc:
            log = keepalived.KeepalivedFiles.in_dir(lab.run_dir, STANDBY).log
            raise LabError(
                f"{exc}; last seen {last}; gw2's status {services.status(STANDBY)}; "
                f"keepalived log: {keepalived.tail(log)}"
            ) from None
        metrics = parse_metrics(services.scrape(STANDBY))
        return Readiness(
            status,
            reasons,
            priorities,
            store_up=by_label(metrics, "ipsec_ha_store_up", "store"),
            vip_holder=lab.vip_holder(),
        )

    def _take_over(self, lab: Lab, services: Services) -> TakeoverMetrics:
        server_id = vip_address(OUTSIDE)
        before = parse_metrics(services.scrape(STANDBY))
        failed_at = self.event("SIGKILL to gw1's keepalived and daemon")
        lab.kill_keepalived(ACTIVE, signal.SIGKILL, wait=False)
        services.kill(ACTIVE, "daemon")
        lab.wait_keepalived_exit(ACTIVE)
        deadline = keepalived.dead_interval(self.advert_int, self.configured) + SETTLE_TIMEOUT
        status = services.wait_role(STANDBY, ("active",), after=failed_at, timeout=deadline)
        self.event("gw2 active")
        sid = {"server_id": server_id}
        # The active node counts what it published: once its first resync is done.
        wanted = len(tunnel.sa_stats(lab, STANDBY)) if self.keyed else 0
        after = wait_for(
            "gw2 to publish what it holds",
            lambda: (
                m
                if sample(m := parse_metrics(services.scrape(STANDBY)), "ipsec_ha_held_sas", **sid)
                == wanted
                else None
            ),
            SETTLE_TIMEOUT,
            0.5,
        )
        self.event("gw2's metrics scraped after the takeover")
        timeline = [t["step"] for t in (status.get("report") or {}).get("timeline", [])]

        def pair(name: str, **labels: str) -> tuple[float, float]:
            return sample(before, name, **labels), sample(after, name, **labels)

        return TakeoverMetrics(
            takeovers_ok=pair("ipsec_ha_takeovers_total", result="ok", **sid),
            takeovers_failed=pair("ipsec_ha_takeovers_total", result="failed", **sid),
            duration_count=pair("ipsec_ha_takeover_duration_seconds_count", **sid),
            duration_sum=pair("ipsec_ha_takeover_duration_seconds_sum", **sid),
            steps=by_label(after, "ipsec_ha_last_takeover_step_seconds", "step"),
            timeline=timeline,
            role=by_label(after, "ipsec_ha_role", "role"),
            held_sas=sample(after, "ipsec_ha_held_sas", **sid),
            store_sas={
                dict(labels)["store"]: v
                for (n, labels), v in after.items()
                if n == "ipsec_ha_store_sas"
            },
        )


def report_lines(outcome: Outcome) -> list[str]:
    """The readable summary."""
    lines = ["timeline (s from the first event):"]
    zero = outcome.events[0][0] if outcome.events else 0.0
    lines += [f"  {at - zero:8.1f}  {text}" for at, text in outcome.events]
    lines.append("")
    for label, r in (
        ("ready", outcome.ready),
        ("cut", outcome.cut),
        ("restored", outcome.restored),
    ):
        lines.append(
            f"  {label:9} --ready exit {r.exit_status}, priorities {r.priorities}, "
            f"store_up {r.store_up}, VIPs on {r.vip_holder}"
        )
        lines += [f"            not ready: {reason}" for reason in r.reasons]
    t = outcome.takeover
    lines += [
        f"  takeover  takeovers ok {t.takeovers_ok[0]:g} -> {t.takeovers_ok[1]:g}, "
        f"duration count {t.duration_count[0]:g} -> {t.duration_count[1]:g}, "
        f"sum {t.duration_sum[0]:.3f} -> {t.duration_sum[1]:.3f} s",
        "            last takeover's steps: "
        + ", ".join(f"{step} {1000 * s:.1f} ms" for step, s in t.steps.items()),
        f"            held SAs {t.held_sas:g}; stores hold {t.store_sas}",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mode", choices=("cold", "hot"), default="hot")
    parser.add_argument("--advert-int", type=float, default=1.0)
    parser.add_argument(
        "--no-tunnel", action="store_true", help="key no tunnel (a kernel without ESP)"
    )
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    args = parser.parse_args(argv)
    say: Callable[[str], None] = (lambda _: None) if args.json else print
    scenario = Scenario(
        args.mode, keyed=not args.no_tunnel, advert_int=args.advert_int, say=lambda s: say(s)
    )
    return run_from_command_line(scenario, args.json, report_lines)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Outcome", "Readiness", "Scenario", "TakeoverMetrics", "main", "report_lines"]

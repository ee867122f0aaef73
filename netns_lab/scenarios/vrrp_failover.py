"""VRRP failover demo: the master's keepalived stops, the VIPs move, transitions are timed.

Run as root: ``python -m netns_lab.scenarios.vrrp_failover [--signal KILL]``.
It builds a lab, shows who holds the VIPs, stops the master's keepalived,
polls the gateways' addresses until the backup holds both VIPs, and prints a
timeline from the notify logs' monotonic timestamps (all relative to the
moment the signal was sent).  The lab is always torn down at the end.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from appliance.errors import ApplianceError
from netns_lab import Lab, LabInterrupted, keepalived
from netns_lab.lab import wait_for
from netns_lab.plan import CLIENT_PROTECTED, GATEWAYS, PRIORITIES, SEGMENTS

SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL}


def say(text: str = "") -> None:
    print(text, flush=True)


def ping(lab: Lab) -> str:
    result = lab.exec("client", ["ping", "-c", "1", "-W", "2", "198.51.100.10"], check=False)
    return "reply" if result.returncode == 0 else "NO reply"


def run(advert_int: float, sig_name: str) -> None:
    sig = SIGNALS[sig_name]
    say(f"== building the lab (VRRPv3, advert_int {advert_int}s)")
    with Lab.create(advert_int=advert_int) as lab:
        say(f"   run id {lab.run_id}: namespaces {lab.ns('client')} ... {lab.ns('swin')}")
        for s in SEGMENTS:
            say(f"   {s.name:8} {s.network:16} VIP {s.vip}")
        say(f"   client protected address {CLIENT_PROTECTED}")
        master = lab.vip_holder()
        if master is None:
            raise ApplianceError(f"no single VIP holder after start: {lab.vip_holders()}")
        backup = next(gw for gw in GATEWAYS if gw != master)
        say(f"== {master} holds the VIPs {lab.vip_holders()}; client -> server: {ping(lab)}")

        say(f"== SIG{sig_name} to {master}'s keepalived")
        t_kill = time.monotonic()
        lab.kill_keepalived(master, sig, wait=False)
        deadline = lab.failover_deadline()

        def backup_holds_all() -> float | None:
            holders = lab.vip_holders()
            return time.monotonic() if all(backup in h for h in holders.values()) else None

        t_detect = wait_for(f"{backup} to hold every VIP", backup_holds_all, deadline, 0.01)
        lab.wait_keepalived_exit(master)
        lab.wait_settled(backup, "MASTER", after=t_kill)
        if sig == signal.SIGTERM:
            lab.wait_settled(master, "STOP", after=t_kill)
        dead = keepalived.dead_interval(advert_int, PRIORITIES[backup])
        say(f"== timeline, ms after the signal (VRRP dead interval {1000 * dead:.0f} ms;")
        say("   notify times are when `ipsec-ha notify` ran, hook start-up included)")
        events = [
            (r.monotonic, f"{r.node} notify {r.type:8} {r.name:12} -> {r.state}")
            for r in lab.transitions()
            if r.monotonic >= t_kill
        ]
        events.append((t_detect, f"{backup} has every VIP configured (seen by polling netlink)"))
        for t, text in sorted(events):
            say(f"   {1000 * (t - t_kill):8.1f}  {text}")
        holder = lab.vip_holder()
        if holder:
            say(f"== {holder} holds the VIPs; client -> server: {ping(lab)}")
        else:
            say(f"== VIPs configured on {lab.vip_holders()}: the killed keepalived could not")
            say(f"   remove them from {master}; {backup} answers ARP now.")
            say(f"   client -> server: {ping(lab)}")
        say("== tearing down")
    say(f"== lab {lab.run_id} removed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--advert-int", type=float, default=0.2, help="VRRPv3 advert interval (s)")
    parser.add_argument(
        "--signal",
        choices=sorted(SIGNALS),
        default="TERM",
        help="TERM: orderly stop (STOP notifications); KILL: a crash",
    )
    args = parser.parse_args(argv)
    try:
        run(args.advert_int, args.signal)
    except LabInterrupted as exc:
        say(f"demo: {exc}; the lab was removed")
        return 128 + exc.signum
    except ApplianceError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

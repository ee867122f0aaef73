"""The lab's IPsec tunnel: client <-> VIP, keyed as an IKE daemon would key it.

One tunnel-mode SA pair (AES-GCM-128) between the client's outside address
and the outside VIP, protecting the client's protected address
(``CLIENT_PROTECTED``) and the inside segment. The client is the foreign
peer: its SAs and policies go in with iproute2 (``ip -batch``, fed on stdin
so that keys never appear in a process's arguments). The active gateway's
go in over netlink as charon would put them (same content, iproute2 too:
the point of the lab is what ipsec-ha does with them afterwards).

The client's inbound SA has a replay window of 4096 (``CLIENT_REPLAY_WINDOW``).
That is far below the sequence jump, so a gateway that sends with a stale
counter is still caught: its numbers are below the window or already seen.
It is wide because the lab VM reorders ESP. On a starved VM, the active
gateway's packets have arrived up to 60 numbers behind later ones, which a
window of 32 refused as replays (docs/lab.md, "Replay window and the ESP
capture"). A window above 32 makes iproute2 key the SA with an ESN replay
state (``XFRMA_REPLAY_ESN_VAL``), as charon does.

``replay_errors(lab, host)`` reads what the scenario's verdict rests on:
the host namespace's ``XfrmInStateSeqError`` (/proc/net/xfrm_stat counts
per network namespace) and each SA's own replay-failure counter.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import LabError
from appliance.netns import run_in_netns
from netns_lab.lab import Lab
from netns_lab.plan import CLIENT_PROTECTED, INSIDE, OUTSIDE, address_of, vip_address

AEAD = "rfc4106(gcm(aes))"
CLIENT = address_of("client", OUTSIDE)
VIP = vip_address(OUTSIDE)
CLIENT_REPLAY_WINDOW = 4096
"""The client's inbound window (strongSwan's ``replay_window`` for the IKE client too)."""
GATEWAY_REPLAY_WINDOW = 32
"""The gateways' inbound window: what charon keys by default, which ipsec-ha restores."""


@dataclass(frozen=True)
class Tunnel:
    """The SPIs of the pair (keys are not kept: nothing here needs them again)."""

    spi_in: int
    """client -> VIP (inbound at the gateway)."""
    spi_out: int
    """VIP -> client (outbound at the gateway, inbound at the client)."""
    reqid: int = 1


def add_pair(lab: Lab, gateway: str, protected: str) -> Tunnel:
    """Key one more SA pair and its policies on ``gateway`` only, for ``protected``.

    Nothing sends on it (the client does not hold it): it is state for the
    appliance to sync, as a second tunnel or a rekey would be.
    """
    pair = Tunnel(
        secrets.randbelow(0x7FFF0000) + 0x1000,
        secrets.randbelow(0x7FFF0000) + 0x1000,
        reqid=2 + secrets.randbelow(1000),
    )
    key_in, key_out = secrets.token_hex(20), secrets.token_hex(20)
    _batch(lab, gateway, _gateway_lines(pair, key_in, key_out, protected))
    return pair


def _gateway_lines(pair: Tunnel, key_in: str, key_out: str, protected: str) -> list[str]:
    """The gateway's side of a pair: both SAs (outbound without a replay window) and the
    in/fwd/out policies between ``protected`` and the inside segment."""
    r, inside = pair.reqid, INSIDE.network
    return [
        _sa(CLIENT, VIP, pair.spi_in, key_in, r, GATEWAY_REPLAY_WINDOW),
        _sa(VIP, CLIENT, pair.spi_out, key_out, r, 0),
        _policy(protected, inside, "in", CLIENT, VIP, r),
        _policy(protected, inside, "fwd", CLIENT, VIP, r),
        _policy(inside, protected, "out", VIP, CLIENT, r),
    ]


def _batch(lab: Lab, host: str, lines: list[str]) -> None:
    result = subprocess.run(
        ["ip", "-n", lab.ns(host), "-batch", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:  # iproute2 names the failing line number, never the key
        raise LabError(f"ip -batch in {host} failed: {result.stderr.strip()}")


def _sa(src: str, dst: str, spi: int, key: str, reqid: int, window: int) -> str:
    return (
        f"xfrm state add src {src} dst {dst} proto esp spi 0x{spi:08x} reqid {reqid} "
        f"mode tunnel replay-window {window} aead {AEAD} 0x{key} 128"
    )


def _policy(sel_src: str, sel_dst: str, direction: str, src: str, dst: str, reqid: int) -> str:
    return (
        f"xfrm policy add src {sel_src} dst {sel_dst} dir {direction} "
        f"tmpl src {src} dst {dst} proto esp reqid {reqid} mode tunnel"
    )


def establish(lab: Lab, gateway: str) -> Tunnel:
    """Key the tunnel on the client and on ``gateway`` (the active one)."""
    tunnel = Tunnel(secrets.randbelow(0x7FFF0000) + 0x1000, secrets.randbelow(0x7FFF0000) + 0x1000)
    key_in, key_out = secrets.token_hex(20), secrets.token_hex(20)  # 16-byte key + 4-byte salt
    r = tunnel.reqid
    protected, inside = CLIENT_PROTECTED, INSIDE.network
    _batch(lab, "client", [
        _sa(CLIENT, VIP, tunnel.spi_in, key_in, r, CLIENT_REPLAY_WINDOW),
        _sa(VIP, CLIENT, tunnel.spi_out, key_out, r, CLIENT_REPLAY_WINDOW),
        _policy(protected, inside, "out", CLIENT, VIP, r),
        _policy(inside, protected, "in", VIP, CLIENT, r),
    ])  # fmt: skip
    _batch(lab, gateway, _gateway_lines(tunnel, key_in, key_out, protected))
    return tunnel


@dataclass(frozen=True)
class SaStats:
    """One SA as ``ip -s xfrm state`` reports it."""

    spi: int
    src: str
    dst: str
    packets: int
    replay_failed: int
    """Packets the SA's replay check refused: outside the window or seen before
    (``replay-window N replay M`` in iproute2's stats: N + M)."""
    oseq: int
    seq: int


_BLOCK = re.compile(r"\n(?=src )")
# iproute2 prints a legacy replay state as "anti-replay context: seq 0x.., oseq 0x..",
# an ESN one as "anti-replay esn context:" and "seq-hi 0x.., seq 0x.., oseq-hi 0x.., oseq 0x..".
_SEQS = re.compile(
    r"anti-replay (?:context:|esn context:\s*seq-hi 0x(?P<seq_hi>[0-9a-f]+),)"
    r" seq 0x(?P<seq>[0-9a-f]+), (?:oseq-hi 0x(?P<oseq_hi>[0-9a-f]+), )?oseq 0x(?P<oseq>[0-9a-f]+)"
)


def sa_stats(lab: Lab, host: str) -> list[SaStats]:
    """Every SA of the lab host ``host`` with its counters."""
    return namespace_sa_stats(lab.ns(host), host)


def namespace_sa_stats(ns: str, label: str) -> list[SaStats]:
    """Every SA of namespace ``ns`` (``label`` names it in errors) with its counters."""
    text = subprocess.run(
        ["ip", "-s", "-d", "-n", ns, "xfrm", "state"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    return parse_sa_stats(text, label)


def parse_sa_stats(text: str, label: str) -> list[SaStats]:
    """The SAs of ``ip -s -d xfrm state`` output, legacy or ESN replay state."""
    out = []
    for block in _BLOCK.split(text.strip()):
        head = re.match(r"src (\S+) dst (\S+)\s+proto esp spi 0x([0-9a-f]+)", block)
        if not head:
            continue
        packets = re.search(r"lifetime current:\s*\n\s*\d+\(bytes\), (\d+)\(packets\)", block)
        replay = re.search(r"replay-window (\d+) replay (\d+) failed \d+", block)
        seqs = _SEQS.search(block)
        if not (packets and replay and seqs):
            raise LabError(f"unexpected `ip -s xfrm state` output in {label}: {block[:200]}")
        out.append(
            SaStats(
                spi=int(head.group(3), 16),
                src=head.group(1),
                dst=head.group(2),
                packets=int(packets.group(1)),
                replay_failed=int(replay.group(1)) + int(replay.group(2)),
                seq=int(seqs.group("seq_hi") or "0", 16) << 32 | int(seqs.group("seq"), 16),
                oseq=int(seqs.group("oseq_hi") or "0", 16) << 32 | int(seqs.group("oseq"), 16),
            )
        )
    return out


def xfrm_stat(lab: Lab, host: str) -> dict[str, int]:
    """The lab host's /proc/net/xfrm_stat."""
    return namespace_xfrm_stat(lab.ns(host))


def namespace_xfrm_stat(ns: str) -> dict[str, int]:
    """Namespace ``ns``'s /proc/net/xfrm_stat (read by a thread inside it: thread-self
    follows the thread's namespace, /proc/net the process's)."""
    text = run_in_netns(ns, Path("/proc/thread-self/net/xfrm_stat").read_text)
    pairs = (line.split() for line in text.splitlines() if line.strip())
    return {name: int(value) for name, value in pairs}


def replay_errors(lab: Lab, host: str) -> dict[str, int]:
    """``XfrmInStateSeqError`` of the namespace and the summed replay counters of its SAs."""
    return {
        "XfrmInStateSeqError": xfrm_stat(lab, host).get("XfrmInStateSeqError", 0),
        "sa_replay_failed": sum(sa.replay_failed for sa in sa_stats(lab, host)),
    }

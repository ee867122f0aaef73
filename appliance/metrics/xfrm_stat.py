"""The kernel's XFRM error counters (``/proc/net/xfrm_stat``) of a network namespace.

The file has one ``Name<whitespace>value`` line per counter
(``XfrmInStateSeqError`` counts replay-window drops); each namespace has its
own. It exists only on a kernel built with ``CONFIG_XFRM_STATISTICS``:
without it there are no samples, and the absence is logged once per
namespace, not at every scrape.

``/proc/net`` follows the thread-group leader's namespace, so the file is
read as ``/proc/thread-self/net/xfrm_stat`` from a thread inside the
namespace: a ``NetnsWorker``'s (``appliance.netns``), which the scrapes share.
"""

from __future__ import annotations

import logging
import threading

from appliance.netns import NetnsWorker

log = logging.getLogger("ipsec_ha.metrics")

XFRM_STAT_PATH = "/proc/thread-self/net/xfrm_stat"

_absent_logged: set[str | None] = set()
_absent_lock = threading.Lock()


def parse_xfrm_stat(text: str) -> dict[str, int]:
    """Counter name -> value; ``ValueError`` naming the first line that is not ``Name value``."""
    counters: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[0].isidentifier() or not fields[1].isdigit():
            raise ValueError(f"xfrm_stat line {number} is not 'Name value': {line!r}")
        counters[fields[0]] = int(fields[1])
    return counters


def read_xfrm_stat(worker: NetnsWorker) -> dict[str, int]:
    """The counters of the worker's namespace; {} when the kernel keeps none.

    ``ValueError`` when the file does not parse.
    """

    def read() -> str | None:
        try:
            with open(XFRM_STAT_PATH, encoding="ascii") as f:
                return f.read()
        except FileNotFoundError:
            return None

    text = worker.run(read)
    netns = worker.netns
    if text is None:
        with _absent_lock:
            first = netns not in _absent_logged
            _absent_logged.add(netns)
        if first:
            where = f"network namespace {netns!r}" if netns else "this network namespace"
            log.warning("no %s in %s (kernel without CONFIG_XFRM_STATISTICS): "
                        "no xfrm_stat metrics", XFRM_STAT_PATH, where)  # fmt: skip
        return {}
    return parse_xfrm_stat(text)


__all__ = ["XFRM_STAT_PATH", "parse_xfrm_stat", "read_xfrm_stat"]

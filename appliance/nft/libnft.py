"""The thin adapter to libnftables: run a batch or a listing inside a namespace.

Each call builds its own libnftables context inside the namespace's worker
thread (see :mod:`appliance.netns`), so its netlink socket lives in that
namespace; a context is never shared between threads.  A caller that lists
often (a metrics scrape) keeps one context instead, made by
:func:`new_context` in a long-lived ``NetnsWorker`` and used only there.
One ``run_batch`` call is one ``nft_run_cmd_from_buffer`` call, which
libnftables sends as a single netlink batch: the kernel commits all of it
or none of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from appliance.errors import KernelError
from appliance.netns import run_in_netns

T = TypeVar("T")

ABSENT_ERROR = "Error: No such file or directory"
"""How libnftables reports a listed table or set that does not exist (ENOENT)."""


def run_batch(netns: str | None, script: str, purpose: str) -> None:
    """Run ``script`` as one transaction; on rejection raise ``KernelError`` (nothing changed)."""
    session(netns, lambda nft: run_batch_on(nft, script, purpose, netns))


def run_batch_on(nft: Any, script: str, purpose: str, netns: str | None) -> None:
    """``run_batch`` on a context the caller keeps (in its own thread and namespace)."""
    rc, _output, error = nft.cmd(script)
    if rc != 0:
        raise KernelError(
            f"libnftables rejected the {purpose}{_where(netns)}, nothing was changed: "
            f"{summarise_error(error, script)}"
        )


def list_json(nft: Any, command: str, netns: str | None) -> list[dict[str, Any]]:
    """Return the ``nftables`` array of a listing command run on context ``nft``."""
    nft.set_json_output(True)
    rc, output, error = nft.cmd(command)
    if rc != 0:
        raise KernelError(f"`{command}`{_where(netns)} failed: {summarise_error(error)}")
    return _items(output)


def list_json_if_present(nft: Any, command: str, netns: str | None) -> list[dict[str, Any]] | None:
    """``list_json``, or None when the table or set it lists does not exist.

    One command instead of ``list tables`` first: libnftables reports the
    absence as the kernel's ENOENT.
    """
    nft.set_json_output(True)
    rc, output, error = nft.cmd(command)
    if rc != 0:
        if ABSENT_ERROR in error:
            return None
        raise KernelError(f"`{command}`{_where(netns)} failed: {summarise_error(error)}")
    return _items(output)


def list_text(nft: Any, command: str, netns: str | None) -> str:
    """Return the nftables-syntax listing of ``command`` run on context ``nft``."""
    nft.set_json_output(False)
    rc, output, error = nft.cmd(command)
    if rc != 0:
        raise KernelError(f"`{command}`{_where(netns)} failed: {summarise_error(error)}")
    text: str = output
    return text


def session(netns: str | None, work: Callable[[Any], T]) -> T:
    """Return ``work(context)`` for a fresh libnftables context inside ``netns``."""
    return run_in_netns(netns, lambda: work(new_context()))


def new_context() -> Any:
    """A libnftables context whose netlink socket is in the calling thread's namespace."""
    # Imported here so that rendering and config (unit tier) need no libnftables.
    import nftables

    try:
        return nftables.Nftables()
    except OSError as exc:
        raise KernelError(f"cannot load libnftables (Debian package libnftables1): {exc}") from None


def summarise_error(error: str, script: str = "") -> str:
    """Condense libnftables' error report for ``script`` to one line.

    libnftables 1.0.6 quotes line 1 of a buffer whatever line failed, so the
    quoted command is left out rather than shown wrong.
    """
    found = [line.split("Error:", 1)[1].strip() for line in error.splitlines() if "Error:" in line]
    summary = "; ".join(dict.fromkeys(found)) if found else (error.strip() or "no reason given")
    if " queue num " in script and "No such file or directory" in summary:
        summary += (
            " (this kernel probably lacks nft_queue, CONFIG_NFT_QUEUE: "
            "remove trap_queue to run without the unknown-SPI trap)"
        )
    return summary


def _items(output: str) -> list[dict[str, Any]]:
    document = json.loads(output)
    items: list[dict[str, Any]] = document.get("nftables", [])
    return items


def _where(netns: str | None) -> str:
    return f" in network namespace {netns!r}" if netns else ""

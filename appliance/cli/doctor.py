"""``ipsec-ha doctor``: what this kernel and machine support."""

import typer

from appliance.cli._app import app
from appliance.cli._output import emit
from appliance.doctor import Report, render, run_checks


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Check what this kernel and machine support, by trying each feature for real.

    Checks root, network namespaces, XFRM netlink, ESP (installs and removes a
    throwaway SA), nftables (libnftables), keepalived and the lab VM's readiness.
    The kernel probes run in a temporary namespace (iha-*-doctor) that is always
    removed.  Everything but the lab VM is required, ESP included: a gateway
    without ESP carries no tunnel (on such a dev host, run the lab inside
    scripts/lab-vm).  Exits 1 when something required is missing; each failure
    comes with one sentence on how to fix it.  JSON: {"ok": bool, "checks": [{"name",
    "ok", "required", "detail", "fix"}, ...]}.
    """
    report = run_checks()
    _emit(report, as_json)
    if not report.ok:
        raise typer.Exit(1)


def _emit(report: Report, as_json: bool) -> None:
    if as_json:
        emit(report.as_dict(), True, lambda _d: "")
    else:
        emit(report, False, render)

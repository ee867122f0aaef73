"""``ipsec-ha version``."""

import typer

from appliance import __version__
from appliance.cli._app import app
from appliance.cli._output import emit


@app.command()
def version(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Print the ipsec-ha version."""
    emit({"version": __version__}, as_json, lambda d: f"ipsec-ha {d['version']}")

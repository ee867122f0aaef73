"""The Typer application object that every command module decorates."""

import typer

app = typer.Typer(
    name="ipsec-ha",
    help=(
        "IPsec gateway failover without re-running IKEv2.\n\n"
        "Snapshots the active gateway's kernel IPsec state (XFRM SAD/SPD) into an SA "
        "store and restores it on the backup when keepalived (VRRP) moves the VIP."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root() -> None:
    """Keep ``ipsec-ha`` a command group even while it has a single command."""

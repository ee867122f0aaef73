"""``python -m netns_lab``: the same as the ``ipsec-ha-lab`` command."""

from netns_lab.cli import main

main()

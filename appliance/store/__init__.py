"""The SA store: one interface (``base.SaStore``), two backends, a UDP server and its client.

* ``base``    the interface, records (``SaKey``, ``SaPut``, ``Batch``...) and errors
* ``sqlite``  the embedded backend (one 0600 file, WAL, synchronous=FULL)
* ``etcd``    the etcd v3 backend (JSON gateway, transactions with compares)
* ``service`` requests in, responses out (sans-IO over a backend)
* ``server``  ``ipsec-ha store serve``: asyncio UDP around the channel and the service
* ``client``  ``StoreClient``: what the daemon and the CLI use
* ``config``  the TOML configuration and the PSK file check

See docs/store.md.
"""

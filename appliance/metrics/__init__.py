"""Prometheus metrics of the daemon and the store server (docs/operations.md, "Monitoring").

- ``latency``: a lock-protected latency histogram the product's own code
  fills (the store client's round trips, the store server's backend calls),
  without depending on prometheus_client;
- ``exposition``: the HTTP endpoint, one thread serving ``/metrics`` from a
  registry of collectors;
- the collectors read the live objects at scrape time, so a metric costs
  nothing between scrapes;
- ``live_reads``: the daemon collector's reads of the served namespace
  (``xfrm_stat``, the guard's counters), from one thread kept there.
"""

"""Sequence-numbered UDP traffic for the lab: measure what a failover costs.

- ``probe``: the sans-IO core (packet format, receiver books, send schedule).
- ``analysis``: gaps, losses and packets per 10 ms from arrival records; the PNG plot.
- ``udp``: the socket adapter (runs inside a network namespace).
"""

from appliance.traffic.analysis import (
    RESULT_FORMAT,
    DirectionSummary,
    analyse,
    flow_arrivals,
    load_result,
    plot_rate,
    rate_histogram,
)
from appliance.traffic.probe import (
    Arrival,
    FlowReceiver,
    Probe,
    RateSchedule,
    Receiver,
    TrafficError,
    decode_probe,
    encode_probe,
)

__all__ = [
    "RESULT_FORMAT",
    "Arrival",
    "DirectionSummary",
    "FlowReceiver",
    "Probe",
    "RateSchedule",
    "Receiver",
    "TrafficError",
    "analyse",
    "decode_probe",
    "encode_probe",
    "flow_arrivals",
    "load_result",
    "plot_rate",
    "rate_histogram",
]

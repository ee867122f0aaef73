"""bench/metrics.py's pure parts, the Grafana dashboard's expressions, and the renderer's PromQL.

The dashboard (docs/grafana/ipsec-ha.json) may use only the metric names of
issue 17's contract, and only the PromQL subset ``netns_lab.dashboard_render``
evaluates (it draws docs/grafana/screenshot.png from a lab recording).
"""

import json
import math
from pathlib import Path

import pytest

from bench import metrics as bm
from netns_lab import dashboard_render as dr

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "ipsec-ha.json"

# The contract (issue 17): metric families, and which are counters or histograms.
GAUGES = {
    "ipsec_ha_info", "ipsec_ha_role", "ipsec_ha_fenced", "ipsec_ha_epoch", "ipsec_ha_store_up",
    "ipsec_ha_store_epoch", "ipsec_ha_store_sas", "ipsec_ha_store_policies", "ipsec_ha_held_sas",
    "ipsec_ha_held_policies", "ipsec_ha_standby_lag_seconds",
    "ipsec_ha_last_sync_timestamp_seconds", "ipsec_ha_last_takeover_step_seconds",
    "ipsec_ha_last_takeover_timestamp_seconds", "ipsec_ha_ondemand_held_spis",
    "ipsec_ha_store_server_info", "ipsec_ha_store_server_associations",
    "ipsec_ha_store_server_half_open", "ipsec_ha_store_server_sas",
    "ipsec_ha_store_server_policies", "ipsec_ha_store_server_epoch",
}  # fmt: skip
COUNTERS = {
    "ipsec_ha_transitions", "ipsec_ha_takeovers", "ipsec_ha_sync_messages",
    "ipsec_ha_store_retransmissions", "ipsec_ha_channel_drops", "ipsec_ha_kernel_xfrm_stat",
    "ipsec_ha_guard_packets", "ipsec_ha_guard_bytes", "ipsec_ha_ondemand_events",
    "ipsec_ha_store_server_requests", "ipsec_ha_store_server_channel_drops",
    "ipsec_ha_store_server_datagrams_received", "ipsec_ha_store_server_retransmits_answered",
}  # fmt: skip
HISTOGRAMS = {
    "ipsec_ha_takeover_duration_seconds", "ipsec_ha_store_rtt_seconds",
    "ipsec_ha_store_server_backend_seconds",
}  # fmt: skip
SAMPLE_NAMES = (
    GAUGES
    | {f"{c}_total" for c in COUNTERS}
    | {f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_count", "_sum")}
)


# -- bench/metrics.py ---------------------------------------------------------------------

# /proc/PID/task/TID/stat of a thread whose comm holds a space and a parenthesis.
STAT = (
    "4242 (ipsec-ha (m) x) S 4200 4242 4242 0 -1 4194560 1234 0 0 0 "
    "731 269 12 8 20 0 5 0 100 50000000 3000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 "
    "1 0 0 0 0 0"
)


def test_stat_fields_are_counted_from_the_last_parenthesis() -> None:
    times = bm.parse_stat(STAT)
    assert (times.utime, times.stime, times.cutime, times.cstime) == (731, 269, 12, 8)
    assert times.own == 1000 and times.with_children == 1020


@pytest.mark.parametrize("text", ["", "4242 comm S 1 2", "4242 (x) S 1 2 3"])
def test_a_stat_line_without_the_fields_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        bm.parse_stat(text)


def test_percent_of_one_core() -> None:
    assert bm.percent_of_core(300, 60.0, 100) == pytest.approx(5.0)
    assert bm.percent_of_core(0, 60.0, 100) == 0.0
    with pytest.raises(ValueError):
        bm.percent_of_core(1, 0.0, 100)


def test_percentile_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert bm.percentile(values, 0.5) == 50.0
    assert bm.percentile(values, 0.99) == 99.0
    assert bm.percentile([3.0, 1.0, 2.0], 1.0) == 3.0
    assert bm.percentile([], 0.5) is None


def test_series_are_the_sample_lines() -> None:
    text = '# HELP a x\n# TYPE a gauge\na 1\n\nb_total{x="#"} 2\n'
    assert bm.count_series(text) == 2


def test_the_metrics_thread_is_the_one_a_burst_grew_beyond_its_idle_growth() -> None:
    # Thread 11 (the follower) is busy in both windows; 12 only when scraped.
    idle = ({10: 100, 11: 500, 12: 7}, {10: 101, 11: 900, 12: 7})
    burst = ({10: 101, 11: 900, 12: 7}, {10: 102, 11: 1250, 12: 200})
    assert bm.most_grown(*burst) == 11  # growth alone would pick the busy follower
    assert bm.calibrated_thread(idle, burst) == 12
    quiet = ({10: 1}, {10: 2})
    assert bm.calibrated_thread(quiet, quiet) is None


def test_the_metrics_threads_growth_counts_a_thread_born_in_the_window_from_zero() -> None:
    # 20: the endpoint's thread; 21: the namespace worker, started by the window's first scrape.
    assert bm.grown_ticks({20: 100}, {20: 130, 21: 12}) == 30 + 12
    assert bm.grown_ticks({20: 100, 21: 5}, {20: 100}) == 0  # 21 ended: its ticks are lost
    assert bm.grown_ticks({}, {}) == 0


def test_the_daemons_threads_are_grouped_main_metrics_workers_and_by_name() -> None:
    # pid 30 is the event loop; 31, 32: unnamed pool threads (the process's comm);
    # 33: the endpoint; 34: a named helper; 35: a pool thread born in the window.
    before = {30: ("python3", 100), 31: ("python3", 50), 32: ("python3", 5),
              33: ("ipsec-ha-metric", 10), 34: ("xfrm-batch-send", 1)}  # fmt: skip
    after = {30: ("python3", 160), 31: ("python3", 70), 33: ("ipsec-ha-metric", 13),
             34: ("xfrm-batch-send", 1), 35: ("python3", 4)}  # fmt: skip
    # 32 ended: its ticks are lost with it, as a thread's own stat goes with the thread.
    assert bm.grown_by_group(before, after, pid=30) == {
        "main": 60, "workers": 20 + 4, "metrics": 3, "xfrm-batch-send": 0,
    }  # fmt: skip
    assert bm.thread_group(33, "ipsec-ha-metric", 30, "python3") == "metrics"
    assert bm.thread_group(36, "asyncio_0", 30, "python3") == "workers"


def test_the_metrics_threads_are_found_by_their_comm_in_a_snapshot() -> None:
    snapshot = {30: ("python3", 100), 33: ("ipsec-ha-metric", 10), 37: ("ipsec-ha-metric", 2)}
    assert bm.named_ticks(snapshot) == {33: 10, 37: 2}
    assert bm.named_ticks({30: ("python3", 100)}) == {}


def test_a_counters_increase_leaves_out_the_unchanged_and_counts_new_ones_from_zero() -> None:
    before = {"unchanged": 10, "changes": 3}
    after = {"unchanged": 10, "changes": 5, "whole": 1}
    assert bm.counter_increase(before, after) == {"changes": 2, "whole": 1}


def test_the_table_shows_the_daemons_threads_and_polls_per_window_kind() -> None:
    result = bm.Result(pairs=10, seconds=60.0, ok=True,
                       threads_pct={"reference": {"main": 1.5, "workers": 2.0},
                                    "scraped": {"main": 1.75, "metrics": 3.25, "workers": 2.0}},
                       follow_polls={"reference": {"unchanged": 60}, "scraped": {}})  # fmt: skip
    rows = dict(bm._thread_rows(result))
    assert rows["  threads 'metrics': reference, scraped"] == "0.00 %, 3.25 %"
    assert rows["  threads 'main': reference, scraped"] == "1.50 %, 1.75 %"
    assert rows["follower polls, reference windows"] == "unchanged 60"
    assert rows["follower polls, scraped windows"] == "none"


def test_the_difference_is_comparable_only_while_the_follower_polls_bring_nothing() -> None:
    quiet = {"window": "reference", "seconds": 40.0, "daemon_pct": 3.7,
             "follow_polls": {"unchanged": 39}}  # fmt: skip
    busy = {**quiet, "window": "scraped", "follow_polls": {"unchanged": 30, "whole": 1}}
    # A poll is counted when it ends: too few in a part may hide one still running.
    stalled = {**quiet, "follow_polls": {"unchanged": 12}}
    idle = {**quiet, "follow_polls": {}}
    assert bm.Result(pairs=1, seconds=1.0, parts=[quiet, quiet]).follower_quiet is True
    assert bm.Result(pairs=1, seconds=1.0, parts=[quiet, busy]).follower_quiet is False
    assert bm.Result(pairs=1, seconds=1.0, parts=[quiet, stalled]).follower_quiet is False
    assert bm.Result(pairs=1, seconds=1.0, parts=[quiet, idle]).follower_quiet is False
    assert bm.Result(pairs=1, seconds=1.0).follower_quiet is None


def test_an_http_reply_is_split_into_status_and_body() -> None:
    assert bm.parse_reply(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\na 1\n") == (200, "a 1\n")
    with pytest.raises(ValueError):
        bm.parse_reply(b"garbage")


def scrape(t: float, latency: float, text: str = "a 1\nb 2\n", status: int = 200) -> bm.Scrape:
    return bm.Scrape(t, "daemon", status, latency, text)


def test_the_scraped_window_gives_size_series_and_latency_quantiles() -> None:
    result = bm.Result(pairs=10, seconds=60.0)
    scrapes = [scrape(float(i), (i + 1) / 1000) for i in range(100)]
    scrapes.append(bm.Scrape(100.0, "daemon", None, 5.0, "", "connection refused"))
    bm.summarize_scrapes(result, scrapes)
    assert (result.scrapes, result.failed_scrapes) == (101, 1)
    assert (result.size_bytes, result.series) == (8, 2)
    assert (result.latency_p50_ms, result.latency_p99_ms) == (50.0, 99.0)


def test_the_table_shows_the_figures_and_the_verdict() -> None:
    result = bm.Result(
        pairs=10000,
        seconds=60.0,
        ok=True,
        scrapes=60,
        size_bytes=12000,
        series=150,
        latency_p50_ms=8.0,
        latency_p99_ms=20.0,
        metrics_thread_pct=0.8,
        metrics_thread_found="named",
        metrics_threads=2,
        daemon_scraped_pct=12.5,
        daemon_reference_pct=11.0,
        windows_s={"reference": 60.0, "scraped": 60.0},
    )
    text = bm.table(result)
    assert result.metrics_thread_ms_per_scrape == 8.0  # 0.8 % of 60 s over 60 scrapes
    assert "8.00 ms" in text
    assert "10000" in text and "12000 bytes, 150 series" in text
    assert "0.800 % of one core" in text and "by its name" in text
    assert next(line for line in text.splitlines() if "threads summed" in line).endswith("2")
    assert "1.50 % of one core" in text  # the difference of the windows

    def verdict(text: str) -> str:
        return next(line for line in text.splitlines() if "under 5%" in line).split()[-1]

    assert verdict(text) == "yes"
    result.metrics_thread_pct = 5.0
    assert verdict(bm.table(result)) == "NO"
    result.metrics_thread_pct = None
    assert verdict(bm.table(result)) == "-"
    failed = bm.Result(pairs=5, seconds=1.0, error="gw2's metrics do not answer")
    assert bm.table(failed) == "N=5: FAILED: gw2's metrics do not answer"


def test_a_recording_line_is_read_back_by_the_renderer() -> None:
    lines = [
        bm.recording_line(scrape(100.0, 0.01, "x_total 1\n")),
        bm.recording_line(scrape(101.0, 0.01, "", status=500)),  # skipped
        bm.recording_line(scrape(102.0, 0.01, "x_total 3\n")),
    ]
    samples = dr.read_recording(lines)
    times, values = samples.series["x_total"][(("__name__", "x_total"),)]
    assert (times, values) == ([100.0, 102.0], [1.0, 3.0])


# -- the renderer's PromQL subset -----------------------------------------------------------


def recorded(*points: tuple[float, str]) -> dr.Samples:
    samples = dr.Samples()
    for when, text in points:
        samples.add_exposition(when, text)
    return samples


def test_rate_and_increase_count_a_counter_reset() -> None:
    samples = recorded(
        (0.0, 'c_total{k="a"} 10\n'),
        (10.0, 'c_total{k="a"} 30\n'),
        (20.0, 'c_total{k="a"} 5\n'),  # restarted: +5
    )
    rate = dr.parse("rate(c_total[30s])")
    assert dr.evaluate(rate, samples, 20.0) == {(("k", "a"),): pytest.approx(25 / 20)}
    increase = dr.parse('increase(c_total{k=~"a|b"}[15s])')
    assert dr.evaluate(increase, samples, 20.0) == {(("k", "a"),): 5.0}
    assert dr.evaluate(rate, samples, 5.0) == {}  # one sample in the range: no rate


def test_selectors_match_labels_and_sum_groups() -> None:
    samples = recorded(
        (0.0, 'g{s="1",t="x"} 1\ng{s="1",t="y"} 2\ng{s="2",t="x"} 4\n'),
    )
    assert dr.evaluate(dr.parse('sum by (s) (g{t!="z"})'), samples, 1.0) == {
        (("s", "1"),): 3.0,
        (("s", "2"),): 4.0,
    }
    assert dr.evaluate(dr.parse('sum(g{s=~"1", t!~"y"})'), samples, 1.0) == {(): 1.0}
    assert dr.evaluate(dr.parse("sum(g) by (t)"), samples, 1.0) == {
        (("t", "x"),): 5.0,
        (("t", "y"),): 2.0,
    }
    assert dr.evaluate(dr.parse("g"), samples, 1.0 + dr.LOOKBACK_S + 1) == {}  # gone stale


def test_histogram_quantile_interpolates_as_prometheus_does() -> None:
    buckets = [(0.1, 10.0), (0.5, 30.0), (math.inf, 40.0)]
    assert dr.histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * 10 / 20)
    assert dr.histogram_quantile(0.2, buckets) == pytest.approx(0.08)
    assert dr.histogram_quantile(0.99, buckets) == 0.5  # in +Inf: the highest finite bound
    assert math.isnan(dr.histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]))
    text = "".join(
        f'h_bucket{{le="{le}",s="a"}} {n}\n' for le, n in (("0.1", 10), ("0.5", 30), ("+Inf", 40))
    )
    samples = recorded((0.0, text))
    expr = dr.parse("histogram_quantile(0.5, sum by (le, s) (h_bucket))")
    assert dr.evaluate(expr, samples, 0.0) == {(("s", "a"),): pytest.approx(0.3)}


@pytest.mark.parametrize(
    ("expr", "named"),
    [
        ("max by (x) (g)", "'max'"),
        ("sum without (x) (g)", "'without'"),
        ("g / h", "'/'"),
        ("g == 1", "'=='"),
        ("avg_over_time(g[1m])", "'avg_over_time'"),
        ("rate(g[1m] offset 5m)", "'offset'"),
    ],
)
def test_expressions_outside_the_subset_are_refused_by_name(expr: str, named: str) -> None:
    with pytest.raises(dr.UnsupportedQuery, match=named):
        dr.parse(expr)


def test_unknown_dashboard_variables_are_refused() -> None:
    assert dr.substitute("rate(x[$__rate_interval])", {"__rate_interval": "15s"}) == "rate(x[15s])"
    with pytest.raises(dr.UnsupportedQuery, match=r"\$instance"):
        dr.substitute('x{i="$instance"}', {"server_id": ".*"})


def test_legend_format_fills_labels() -> None:
    labels = (("__name__", "x"), ("op", "put"), ("result", "ok"))
    assert dr.legend("{{op}} {{ result }}", labels) == "put ok"
    assert dr.legend("", labels) == 'x{op="put", result="ok"}'


# -- the dashboard -------------------------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_the_dashboard_is_a_grafana_dashboard_with_its_variables() -> None:
    d = dashboard()
    assert d["schemaVersion"] >= 36 and d["title"] and d["uid"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["server_id"]["type"] == "query"
    assert "ipsec_ha_info" in variables["server_id"]["definition"]
    ids = [p["id"] for p in dr.panels(d)]
    assert len(ids) == len(set(ids))
    for panel in dr.panels(d):
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert panel["targets"], panel["title"]


def test_every_dashboard_expression_is_in_the_subset_and_the_contract() -> None:
    d = dashboard()
    variables = {"server_id": ".*", "__rate_interval": "15s", "__range": "300s"}
    used: set[str] = set()
    for expr in dr.expressions(d):
        names = dr.metric_names(dr.parse(dr.substitute(expr, variables)))
        assert names <= SAMPLE_NAMES, f"{expr}: {names - SAMPLE_NAMES} not in the contract"
        used |= names
    # The panels the brief asks for are there.
    for name in (
        "ipsec_ha_role", "ipsec_ha_fenced", "ipsec_ha_standby_lag_seconds", "ipsec_ha_held_sas",
        "ipsec_ha_store_sas", "ipsec_ha_store_up", "ipsec_ha_store_rtt_seconds_bucket",
        "ipsec_ha_takeovers_total", "ipsec_ha_last_takeover_step_seconds",
        "ipsec_ha_sync_messages_total", "ipsec_ha_store_retransmissions_total",
        "ipsec_ha_channel_drops_total", "ipsec_ha_kernel_xfrm_stat_total",
        "ipsec_ha_guard_packets_total", "ipsec_ha_ondemand_events_total",
        "ipsec_ha_store_server_requests_total", "ipsec_ha_store_server_backend_seconds_bucket",
        "ipsec_ha_store_server_associations",
    ):  # fmt: skip
        assert name in used, name


def test_the_dashboard_renders_from_a_recording(tmp_path: Path) -> None:
    lines = []
    for k in range(30):
        text = (
            f'ipsec_ha_role{{server_id="192.0.2.1",role="active"}} {int(k >= 15)}\n'
            f'ipsec_ha_role{{server_id="192.0.2.1",role="standby"}} {int(k < 15)}\n'
            f'ipsec_ha_sync_messages_total{{store="198.51.100.3",op="put",result="ok"}} {3 * k}\n'
            f'ipsec_ha_last_takeover_step_seconds{{server_id="192.0.2.1",step="fetched"}} 2.5\n'
        )
        lines.append(bm.recording_line(scrape(1000.0 + k, 0.01, text)))
    samples = dr.read_recording(lines)
    out = tmp_path / "dashboard.png"
    dr.render(dashboard(), samples, out, points=30, skip_s=5.0)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv",
    [["--sas", "0"], ["--sas", "60001"], ["--seconds", "0"], ["--rounds", "0"],
     ["--interval", "0"], ["--sync-timeout", "0"], ["--sync-timeout", "nan"],
     ["--seconds", "inf"]],
)  # fmt: skip
def test_the_cold_bench_refuses_bad_arguments_before_it_makes_anything(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import metrics_cold

    with pytest.raises(SystemExit) as exited:
        metrics_cold.main(argv)
    assert exited.value.code == 2
    assert "must be" in capsys.readouterr().err

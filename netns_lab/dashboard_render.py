"""Draw a Grafana dashboard's panels from a recording of scrapes, without Grafana.

Grafana is not packaged where the lab runs (neither Debian nor PyPI has it),
so the dashboard's screenshot in ``docs/grafana/`` is drawn by this module
(``scripts/dashboard-render``) from a lab recording: the JSON lines that
``bench/metrics.py --record`` writes, one scrape a line (``time``,
``target``, ``text`` in Prometheus' text format). It reads the dashboard JSON,
evaluates each panel's expressions on the recorded samples and draws the
panels where their ``gridPos`` puts them, with their titles, one line per
series (a ``barchart`` panel: one bar per series at the end of the recording;
a ``stat`` panel: the last values).

It understands only the PromQL the dashboard uses, and refuses anything else
by name (``UnsupportedQuery``):

- selectors with label matchers: ``name{a="x", b!="y", c=~"re", d!~"re"}``;
- ``rate(selector[range])`` and ``increase(selector[range])``;
- ``sum(...)`` and ``sum by (labels) (...)``;
- ``histogram_quantile(q, sum by (le, ...) (rate|increase(..._bucket[range])))``.

The evaluation is Prometheus' in outline, simpler at the edges: an instant
selector takes the latest sample at most ``LOOKBACK_S`` old; ``rate`` and
``increase`` take the samples inside the range (counter resets counted) and do
not extrapolate to the range's ends; ``histogram_quantile`` interpolates
linearly inside the bucket, as Prometheus does. Dashboard variables:
``$server_id`` becomes ``.*`` (every server ID), ``$__rate_interval``
``--rate-interval``, ``$__range`` the recording's length.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOOKBACK_S = 300.0
"""How old a sample an instant selector still takes (Prometheus' default lookback)."""
AGGREGATIONS = frozenset(
    ("sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
     "bottomk", "topk", "quantile", "limitk", "limit_ratio")
)  # fmt: skip
"""PromQL's aggregation operators (``max by (x) (...)``): only ``sum`` is evaluated."""

Labels = tuple[tuple[str, str], ...]
"""A series' labels, sorted by name; ``__name__`` among them while the name is kept."""
Vector = dict[Labels, float]


class UnsupportedQuery(ValueError):
    """An expression outside the subset this renderer evaluates."""


class RecordingError(ValueError):
    """A recording line that is not a scrape."""


# -- the recorded samples ----------------------------------------------------------------


@dataclass
class Samples:
    """Every recorded sample: metric name -> labels -> (times, values), oldest first."""

    series: dict[str, dict[Labels, tuple[list[float], list[float]]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    start: float = math.inf
    end: float = -math.inf

    def add(self, when: float, name: str, labels: Mapping[str, str], value: float) -> None:
        key = tuple(sorted({**labels, "__name__": name}.items()))
        times, values = self.series[name].setdefault(key, ([], []))
        if times and when < times[-1]:
            raise RecordingError(f"scrapes out of order at {when} ({name})")
        times.append(when)
        values.append(value)
        self.start, self.end = min(self.start, when), max(self.end, when)

    def add_exposition(self, when: float, text: str) -> int:
        """Every sample of one scrape's text; how many there were."""
        from prometheus_client.parser import text_string_to_metric_families

        n = 0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.add(when, sample.name, sample.labels, float(sample.value))
                n += 1
        return n


def read_recording(lines: Iterable[str]) -> Samples:
    """A recording (JSON lines of scrapes) as samples; failed scrapes are skipped."""
    samples = Samples()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            when, text = float(record["time"]), record.get("text") or ""
        except (ValueError, KeyError, TypeError) as exc:
            raise RecordingError(f"recording line {number}: not a scrape: {exc}") from None
        if record.get("status", 200) != 200:
            continue
        try:
            samples.add_exposition(when, text)
        except ValueError as exc:
            raise RecordingError(f"recording line {number}: {exc}") from None
    return samples


# -- the PromQL subset: parsing -----------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[tuple[str, str, str], ...] = ()
    """(label, op, value) with op one of = != =~ !~."""


@dataclass(frozen=True)
class RangeFunction:
    function: str
    """rate or increase."""
    selector: Selector
    range_s: float


@dataclass(frozen=True)
class Sum:
    by: tuple[str, ...] | None
    """None: sum everything into one series."""
    argument: Expr


@dataclass(frozen=True)
class HistogramQuantile:
    quantile: float
    argument: Expr


Expr = Selector | RangeFunction | Sum | HistogramQuantile

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<duration>\d+(?:ms|s|m|h|d))(?![\w])
      | (?P<number>\d+(?:\.\d*)?|\.\d+)
      | (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
      | (?P<op>=~|!~|!=|==|>=|<=|[=(){}\[\],<>+\-*/%^])
      | (?P<other>\S)
    )""",
    re.VERBOSE,
)
_DURATION_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        m = _TOKEN.match(text, position)
        if m is None:  # only trailing blanks are left
            break
        kind = m.lastgroup or "other"
        out.append((kind, m.group(kind)))
        position = m.end()
    return out


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text)
    if m is None:
        raise UnsupportedQuery(f"not a duration: {text!r}")
    return int(m.group(1)) * _DURATION_S[m.group(2)]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, kind: str | None = None, value: str | None = None) -> str:
        token = self.peek()
        if token is None:
            raise UnsupportedQuery(f"{self.text!r} ends early")
        if (kind is not None and token[0] != kind) or (value is not None and token[1] != value):
            raise self.refuse(token, f"expected {value or kind}")
        self.i += 1
        return token[1]

    def refuse(self, token: tuple[str, str], why: str = "") -> UnsupportedQuery:
        kind, value = token
        if kind == "ident" and (self.peek_after_is("(") or value in AGGREGATIONS):
            what = f"the function or aggregation {value!r}"
        elif kind == "ident" and value in ("by", "without", "offset", "on", "ignoring", "bool"):
            what = f"the modifier {value!r}"
        elif kind == "op" and value not in "(){}[],":
            what = f"the operator {value!r}"
        else:
            what = f"{value!r}"
        detail = f" ({why})" if why else ""
        return UnsupportedQuery(f"{self.text!r}: {what} is not supported{detail}")

    def peek_after_is(self, value: str) -> bool:
        nxt = self.tokens[self.i + 1] if self.i + 1 < len(self.tokens) else None
        return nxt is not None and nxt[1] == value

    def expression(self) -> Expr:
        token = self.peek()
        if token is None:
            raise UnsupportedQuery(f"{self.text!r}: an empty expression")
        kind, value = token
        if kind != "ident":
            raise self.refuse(token)
        if value == "sum":
            return self.sum()
        if value in ("rate", "increase") and self.peek_after_is("("):
            self.i += 1
            self.take(value="(")
            selector = self.selector()
            self.take(value="[")
            range_s = parse_duration(self.take("duration"))
            self.take(value="]")
            self.take(value=")")
            return RangeFunction(value, selector, range_s)
        if value == "histogram_quantile" and self.peek_after_is("("):
            self.i += 1
            self.take(value="(")
            q = float(self.take("number"))
            self.take(value=",")
            argument = self.expression()
            self.take(value=")")
            return HistogramQuantile(q, argument)
        if self.peek_after_is("(") or value in AGGREGATIONS:
            raise self.refuse(token)
        return self.selector()

    def labels(self) -> tuple[str, ...]:
        self.take(value="(")
        names = [self.take("ident")]
        while self.peek() == ("op", ","):
            self.i += 1
            names.append(self.take("ident"))
        self.take(value=")")
        return tuple(names)

    def sum(self) -> Sum:
        self.take("ident", "sum")
        by: tuple[str, ...] | None = None
        token = self.peek()
        if token is not None and token[0] == "ident":
            if token[1] != "by":
                raise self.refuse(token)
            self.i += 1
            by = self.labels()
        self.take(value="(")
        argument = self.expression()
        self.take(value=")")
        token = self.peek()
        if token is not None and token[0] == "ident":
            if token[1] != "by" or by is not None:
                raise self.refuse(token)
            self.i += 1
            by = self.labels()
        return Sum(by, argument)

    def selector(self) -> Selector:
        name = self.take("ident")
        matchers = []
        if self.peek() == ("op", "{"):
            self.i += 1
            while self.peek() != ("op", "}"):
                label = self.take("ident")
                token = self.peek()
                if token is None or token[1] not in ("=", "!=", "=~", "!~"):
                    raise self.refuse(token or ("op", "end"), "a label matcher")
                self.i += 1
                value = json.loads(self.take("string"))
                matchers.append((label, token[1], value))
                if self.peek() == ("op", ","):
                    self.i += 1
            self.take(value="}")
        return Selector(name, tuple(matchers))

    def parse(self) -> Expr:
        expr = self.expression()
        token = self.peek()
        if token is not None:
            raise self.refuse(token)
        return expr


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace ``$name`` / ``${name}`` dashboard variables; an unknown one is refused by name."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise UnsupportedQuery(f"{expr!r}: the variable ${name} is not supported")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def parse(expr: str) -> Expr:
    """One expression of the subset; ``UnsupportedQuery`` names what is outside it."""
    return _Parser(expr).parse()


def metric_names(expr: Expr) -> set[str]:
    """The metric names an expression reads."""
    if isinstance(expr, Selector):
        return {expr.name}
    if isinstance(expr, RangeFunction):
        return {expr.selector.name}
    return metric_names(expr.argument)


# -- the PromQL subset: evaluation ------------------------------------------------------


def _matches(labels: Mapping[str, str], matchers: Iterable[tuple[str, str, str]]) -> bool:
    for label, op, value in matchers:
        have = labels.get(label, "")
        if op == "=" and have != value:
            return False
        if op == "!=" and have == value:
            return False
        if op == "=~" and re.fullmatch(value, have) is None:
            return False
        if op == "!~" and re.fullmatch(value, have) is not None:
            return False
    return True


def _drop_name(labels: Labels) -> Labels:
    return tuple(kv for kv in labels if kv[0] != "__name__")


def _selected(
    samples: Samples, selector: Selector
) -> Iterator[tuple[Labels, tuple[list[float], list[float]]]]:
    for labels, points in samples.series.get(selector.name, {}).items():
        if _matches(dict(labels), selector.matchers):
            yield labels, points


def _counter_delta(values: Sequence[float]) -> float:
    """The increase over successive samples, a drop being a counter reset."""
    total = 0.0
    for before, after in itertools.pairwise(values):
        total += after - before if after >= before else after
    return total


def evaluate(expr: Expr, samples: Samples, at: float) -> Vector:
    """The expression's value at time ``at``: labels -> value."""
    if isinstance(expr, Selector):
        out: Vector = {}
        for labels, (times, values) in _selected(samples, expr):
            i = bisect.bisect_right(times, at) - 1
            if i >= 0 and at - times[i] <= LOOKBACK_S:
                out[labels] = values[i]
        return out
    if isinstance(expr, RangeFunction):
        out = {}
        for labels, (times, values) in _selected(samples, expr.selector):
            lo = bisect.bisect_right(times, at - expr.range_s)
            hi = bisect.bisect_right(times, at)
            if hi - lo < 2:
                continue
            delta = _counter_delta(values[lo:hi])
            if expr.function == "rate":
                out[_drop_name(labels)] = delta / (times[hi - 1] - times[lo])
            else:
                out[_drop_name(labels)] = delta
        return out
    if isinstance(expr, Sum):
        grouped: dict[Labels, float] = defaultdict(float)
        for labels, value in evaluate(expr.argument, samples, at).items():
            keep = () if expr.by is None else tuple(kv for kv in labels if kv[0] in expr.by)
            grouped[keep] += value
        return dict(grouped)
    return _quantiles(expr.quantile, evaluate(expr.argument, samples, at))


def _bound(le: str) -> float:
    return math.inf if le == "+Inf" else float(le)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile`` over (upper bound, cumulative count) buckets."""
    buckets = sorted(buckets)
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]):
        return math.nan
    total = buckets[-1][1]
    if total <= 0 or not 0 <= q <= 1:
        return math.nan
    rank = q * total
    i = next(k for k, (_, count) in enumerate(buckets) if count >= rank)
    if i == len(buckets) - 1:
        return buckets[-2][0]  # in the +Inf bucket: the highest finite bound
    lower, below = (0.0, 0.0) if i == 0 else buckets[i - 1]
    upper, count = buckets[i]
    if count == below:
        return upper
    return lower + (upper - lower) * (rank - below) / (count - below)


def _quantiles(q: float, vector: Vector) -> Vector:
    groups: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
    for labels, value in vector.items():
        le = dict(labels).get("le")
        if le is None:
            continue
        groups[_drop_name(tuple(kv for kv in labels if kv[0] != "le"))].append((_bound(le), value))
    out = {}
    for labels, buckets in groups.items():
        value = histogram_quantile(q, buckets)
        if not math.isnan(value):
            out[labels] = value
    return out


def legend(template: str, labels: Labels) -> str:
    """``{{label}}`` placeholders filled from the series' labels (Grafana's legendFormat)."""
    values = dict(labels)
    if not template:
        inner = ", ".join(f'{k}="{v}"' for k, v in labels if k != "__name__")
        return f"{values.get('__name__', '')}{{{inner}}}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values.get(m.group(1), ""), template)


def series_over(expr: Expr, samples: Samples, times: Sequence[float]) -> dict[Labels, list[float]]:
    """The expression at each time: labels -> values (NaN where a series has none)."""
    out: dict[Labels, list[float]] = {}
    for k, at in enumerate(times):
        for labels, value in evaluate(expr, samples, at).items():
            out.setdefault(labels, [math.nan] * len(times))[k] = value
    return out


# -- the dashboard ------------------------------------------------------------------------


def panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def expressions(dashboard: Mapping[str, Any]) -> list[str]:
    """Every target's ``expr`` of every panel."""
    return [t["expr"] for p in panels(dashboard) for t in p.get("targets", []) if "expr" in t]


def default_variables(samples: Samples, rate_interval: str) -> dict[str, str]:
    span = max(1, math.ceil(samples.end - samples.start)) if samples.end > samples.start else 1
    return {
        "server_id": ".*",
        "__rate_interval": rate_interval,
        "__range": f"{span}s",
        "DS_PROMETHEUS": "recording",
    }


# -- drawing ---------------------------------------------------------------------------

BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
MUTED = "#8e8e9a"
COLORS = ("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9",
          "#705da0", "#37872d", "#fade2a", "#c4162a", "#1f60c4")  # fmt: skip
UNIT_SUFFIX = {"s": " s", "ops": " /s", "pps": " /s", "reqps": " req/s"}


def render(
    dashboard: Mapping[str, Any],
    samples: Samples,
    output: Path,
    *,
    rate_interval: str = "15s",
    points: int = 300,
    note: str = "",
    skip_s: float = 0.0,
) -> None:
    """Draw the dashboard from the samples into a PNG at ``output``.

    ``skip_s``: the time axis starts that long after the first sample (the
    samples before still feed rates and lookbacks).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker as mticker
    from matplotlib.patches import Rectangle

    if samples.end < samples.start:
        raise RecordingError("the recording holds no scrape")
    variables = default_variables(samples, rate_interval)
    first = min(samples.start + max(0.0, skip_s), samples.end)
    step = max((samples.end - first) / max(points - 1, 1), 1e-3)
    times = [first + k * step for k in range(points)]
    stamps = [datetime.fromtimestamp(t, UTC) for t in (times[0], times[-1])]
    clock = mticker.FuncFormatter(lambda v, _: f"{datetime.fromtimestamp(v, UTC):%H:%M:%S}")
    every = panels(dashboard)
    rows = max((p["gridPos"]["y"] + p["gridPos"]["h"]) for p in every)
    column_in, row_in, header_in = 0.9, 0.36, 0.7
    width, height = 24 * column_in, rows * row_in + header_in
    figure = plt.figure(figsize=(width, height), facecolor=BACKGROUND)
    figure.text(
        0.008,
        1 - 0.25 / height,
        dashboard.get("title", "dashboard"),
        color=TEXT,
        fontsize=15,
        va="top",
        weight="bold",
    )
    start_text = stamps[0].strftime("%Y-%m-%d %H:%M:%S")
    figure.text(
        0.992,
        1 - 0.25 / height,
        f"{start_text} .. {stamps[-1]:%H:%M:%S} UTC   {note}",
        color=MUTED,
        fontsize=9,
        va="top",
        ha="right",
    )

    def box(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        """Grid units -> figure fraction (left, bottom, width, height)."""
        top = header_in + y * row_in
        return (x / 24, 1 - (top + h * row_in) / height, w / 24, h * row_in / height)

    for panel in every:
        g = panel["gridPos"]
        left, bottom, w, h = box(g["x"], g["y"], g["w"], g["h"])
        if panel.get("type") == "row":
            figure.text(
                left + 0.004,
                bottom + h / 2,
                panel.get("title", ""),
                color=TEXT,
                fontsize=11,
                va="center",
                weight="bold",
            )
            continue
        pad_x, pad_y = 0.003, 0.004
        figure.patches.append(
            Rectangle(
                (left + pad_x / 2, bottom + pad_y / 2),
                w - pad_x,
                h - pad_y,
                transform=figure.transFigure,
                facecolor=PANEL,
                edgecolor=BORDER,
                linewidth=0.8,
                zorder=-10,
            )
        )
        title_h = 0.32 / height
        figure.text(
            left + 0.006,
            bottom + h - pad_y - 0.04 / height,
            panel.get("title", ""),
            color=TEXT,
            fontsize=9,
            va="top",
            weight="bold",
        )
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        drawn: list[tuple[str, list[float]]] = []
        for target in panel.get("targets", []):
            expr = parse(substitute(target["expr"], variables))
            for labels, values in sorted(series_over(expr, samples, times).items()):
                drawn.append((legend(target.get("legendFormat", ""), labels), values))
        legend_rows = min(3, math.ceil(len(drawn) / 4)) if drawn else 0
        legend_h = legend_rows * 0.17 / height
        axes = figure.add_axes(
            (
                left + 0.03,
                bottom + pad_y + 0.22 / height + legend_h,
                w - 0.036,
                h - pad_y * 2 - title_h - 0.22 / height - legend_h,
            )
        )
        axes.set_facecolor(PANEL)
        for spine in axes.spines.values():
            spine.set_color(BORDER)
        axes.tick_params(colors=MUTED, labelsize=7, length=2)
        axes.grid(True, color=BORDER, linewidth=0.5)
        if not drawn or all(all(math.isnan(v) for v in values) for _, values in drawn):
            axes.set_xticks([])
            axes.set_yticks([])
            axes.text(
                0.5,
                0.5,
                "No data",
                color=MUTED,
                fontsize=10,
                ha="center",
                va="center",
                transform=axes.transAxes,
            )
            continue
        kind = panel.get("type")
        if kind in ("barchart", "stat"):
            last = [
                (name, next((v for v in reversed(vals) if not math.isnan(v)), math.nan))
                for name, vals in drawn
            ]
            last = [(n, v) for n, v in last if not math.isnan(v)]
            names = [n for n, _ in last]
            axes.barh(
                range(len(last)),
                [v for _, v in last],
                color=[COLORS[i % len(COLORS)] for i in range(len(last))],
            )
            axes.set_yticks(range(len(last)), names)
            axes.invert_yaxis()
            for i, (_, v) in enumerate(last):
                axes.text(
                    v,
                    i,
                    f" {v:.3g}{UNIT_SUFFIX.get(unit, '')}",
                    color=TEXT,
                    fontsize=7,
                    va="center",
                )
            axes.margins(x=0.25)
            continue
        custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
        stepped = custom.get("lineInterpolation") == "stepAfter"
        for i, (name, values) in enumerate(drawn):
            axes.plot(
                times,
                values,
                color=COLORS[i % len(COLORS)],
                linewidth=1.2,
                label=name,
                drawstyle="steps-post" if stepped else "default",
            )
        axes.xaxis.set_major_formatter(clock)
        axes.xaxis.set_major_locator(mticker.MaxNLocator(nbins=6, steps=[1, 2, 3, 5, 6, 10]))
        axes.set_xlim(times[0], times[-1])
        if unit == "dateTimeAsIso":
            axes.yaxis.set_major_formatter(
                mticker.FuncFormatter(
                    lambda v, _: datetime.fromtimestamp(v, UTC).strftime("%H:%M:%S")
                )
            )
        elif unit in UNIT_SUFFIX:
            axes.set_ylabel(UNIT_SUFFIX[unit].strip(), color=MUTED, fontsize=7)
        if drawn:
            axes.legend(
                loc="upper left",
                bbox_to_anchor=(0, -0.09),
                ncol=4,
                fontsize=7,
                frameon=False,
                labelcolor=TEXT,
                handlelength=1.2,
                columnspacing=1.0,
            )
    figure.savefig(output, dpi=100, facecolor=BACKGROUND)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/dashboard-render", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("dashboard", type=Path, help="a Grafana dashboard JSON")
    parser.add_argument("recording", type=Path, help="JSON lines of scrapes (bench/metrics.py)")
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--rate-interval", default="15s", help="what $__rate_interval becomes")
    parser.add_argument("--points", type=int, default=300, help="points per series")
    parser.add_argument("--note", default="", help="a line of text for the header")
    parser.add_argument(
        "--skip", type=float, default=0.0, metavar="S", help="start the time axis S s in"
    )
    args = parser.parse_args(argv)
    try:
        parse_duration(args.rate_interval)
        dashboard = json.loads(args.dashboard.read_text())
        with args.recording.open() as f:
            samples = read_recording(f)
        render(
            dashboard,
            samples,
            args.output,
            rate_interval=args.rate_interval,
            points=args.points,
            note=args.note,
            skip_s=args.skip,
        )
    except (OSError, ValueError) as exc:
        print(f"dashboard-render: {exc}", file=sys.stderr)
        return 1
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

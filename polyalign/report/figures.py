"""Figure primitives of the report (matplotlib, Agg canvas, PNG bytes at 110 dpi).

Figures are drawn on :class:`matplotlib.figure.Figure` with an Agg canvas directly (no
pyplot: no global state, no display needed). Colours are fixed per run order
(:data:`RUN_COLOURS`, Okabe-Ito colour-blind-safe palette) so a run has the same colour in
every figure; legends sit outside the axes; ``bbox_inches="tight"`` keeps them in the PNG.
The figures themselves are in :mod:`polyalign.report.plots` and the ``*_plot`` modules.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from polyalign.data.languages import language_name
from polyalign.report.tables import direction

DPI = 110
RUN_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# tab10, then six more that stay apart from it (black, gold, navy, olive, magenta, teal).
LANGUAGE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                    "#bcbd22", "#17becf", "#000000", "#e7ba52", "#393b79", "#637939", "#a55194", "#006d5b")


_UNSAFE_SLUG = re.compile(r"[^A-Za-z0-9_-]+")


def safe_slug(text: str) -> str:
    """A file-name stem from ``text`` (a metric name read from results.json is untrusted):
    only ASCII letters, digits, ``_`` and ``-``; no separators, no ``..``, never empty."""
    slug = _UNSAFE_SLUG.sub("_", text).strip("_-")[:100]
    return slug or "figure"


@dataclass
class Plot:
    """One rendered figure: ``slug`` names the PNG file, ``png`` holds its bytes.

    The slug is sanitised on creation (:func:`safe_slug`): it may come from metric names.
    """

    slug: str
    title: str
    caption: str
    png: bytes

    def __post_init__(self) -> None:
        self.slug = safe_slug(self.slug)


def run_colour(index: int) -> str:
    return RUN_COLOURS[index % len(RUN_COLOURS)]


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson r (float64); None with fewer than 3 points or a constant variable."""
    if len(x) != len(y) or len(x) < 3:
        return None
    mx, my = math.fsum(x) / len(x), math.fsum(y) / len(y)
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def r_text(r: float | None) -> str:
    return "r undefined" if r is None else f"r = {r:.3f}"


def render(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    return buf.getvalue()


SHORT_NAMES = {
    "unsafe_rate": "unsafe rate (attack success)", "safety_rate": "safety rate", "tox_prob": "toxicity probability",
    "emt": "expected max. toxicity", "avg_tox": "average toxicity", "accuracy": "accuracy",
    "over_refusal": "over-refusal (benign prompts)",
}


def axis_label(metric: str) -> str:
    """A short axis label: ``unsafe rate (attack success), lower is better``."""
    arrow = {1: "higher is better", -1: "lower is better"}.get(direction(metric))
    name = SHORT_NAMES.get(metric, metric)
    return f"{name}\n({arrow})" if arrow else name


def legend_outside(ax, **kwargs) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False, **kwargs)


def bar_axes(n_langs: int, n_series: int) -> tuple[Figure, object]:
    width = min(18.0, max(6.0, 1.2 + n_langs * (0.28 * n_series + 0.35)))
    fig = Figure(figsize=(width, 4.2))
    return fig, fig.add_subplot(1, 1, 1)


def bars(ax, languages: list[str], series: list[tuple[str, dict[str, float | None], dict]],
         dominant: str | None) -> None:
    """Grouped bars: ``series`` = [(label, {lang: value}, bar style)]; missing values marked n/a."""
    n = len(series)
    width = 0.8 / n
    for k, (label, values, style) in enumerate(series):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(languages))]
        heights = [values.get(lang) for lang in languages]
        ax.bar([x for x, h in zip(xs, heights) if h is not None], [h for h in heights if h is not None],
               width=width * 0.92, label=label, **style)
        for x, h in zip(xs, heights):
            if h is None:
                ax.text(x, 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=8, color="#555555",
                        transform=ax.get_xaxis_transform())
    ax.set_xticks(range(len(languages)))
    rotate = len(languages) > 8
    ax.set_xticklabels([language_name(lang) for lang in languages], rotation=35 if rotate else 0,
                       ha="right" if rotate else "center")
    for tick, lang in zip(ax.get_xticklabels(), languages):
        if lang == dominant:
            tick.set_fontweight("bold")
    ax.set_xlim(-0.6, len(languages) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    legend_outside(ax)


def unit_range(values: list[float]) -> bool:
    """All values in [0, 1]: a rate, drawn on the full 0..1 axis so runs compare at a glance."""
    return bool(values) and all(0.0 <= v <= 1.0 for v in values)


def scatter(title: str, xlabel: str, ylabel: str, points: list[tuple[int, str, list[tuple[str, float, float]]]],
            slug: str, caption: str, with_r: bool, unit_axes: bool = False) -> Plot:
    """``points`` = [(run index, run name, [(lang, x, y)])]; one colour and marker per run.

    Markers are hollow and shrink with the run index, so runs that land on the same spot
    stay visible as nested shapes; languages at one spot share a label ("ar, zh"): one line per
    run in its colour, or one dark-grey line when every run there has the same languages. ``unit_axes``: both axes 0..1.
    """
    fig = Figure(figsize=(7.2, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    all_x, all_y = [], []
    if not with_r and len(points) == 2 and points[0][0] == 0:
        # Movement of each language from the first run to the second (more runs: a tangle, so none).
        first = {lang: (x, y) for lang, x, y in points[0][2]}
        for _, _, pts in points[1:]:
            for lang, x, y in pts:
                if lang in first and (x, y) != first[lang]:
                    ax.annotate("", (x, y), xytext=first[lang], zorder=1,
                                arrowprops={"arrowstyle": "->", "color": "#999999", "linewidth": 0.9,
                                            "shrinkA": 5, "shrinkB": 5})
    spots: dict[tuple[float, float], list[tuple[int, str]]] = {}
    for index, name, pts in points:
        xs, ys = [p[1] for p in pts], [p[2] for p in pts]
        all_x += xs
        all_y += ys
        label = f"{name} ({r_text(pearson(xs, ys))})" if with_r and len(points) > 1 else name
        ax.scatter(xs, ys, facecolors="none", edgecolors=run_colour(index), linewidths=1.6,
                   marker=RUN_MARKERS[index % len(RUN_MARKERS)], s=max(22, 90 - 22 * index), label=label, zorder=3)
        for lang, x, y in pts:
            spots.setdefault((round(x, 9), round(y, 9)), []).append((index, lang))
    for (x, y), members in spots.items():
        by_run: dict[int, list[str]] = {}
        for index, lang in members:
            by_run.setdefault(index, []).append(lang)
        if len(by_run) > 1 and len({tuple(v) for v in by_run.values()}) == 1:  # every run here has the same languages
            ax.annotate(", ".join(next(iter(by_run.values()))), (x, y), xytext=(5, 4), textcoords="offset points",
                        fontsize=7.5, color="#333333")
            continue
        for k, (index, langs) in enumerate(by_run.items()):  # one line per run, in its colour
            ax.annotate(", ".join(langs), (x, y), xytext=(5, 4 + 9 * k), textcoords="offset points", fontsize=7.5,
                        color=run_colour(index))
    if with_r:
        pooled = ", runs pooled" if len(points) > 1 else ""
        title += f" (Pearson {r_text(pearson(all_x, all_y))}, {len(all_x)} points{pooled})"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if unit_axes:
        ax.set_xlim(-0.05, 1.12)  # room on the right for the labels of points at 1.0
        ax.set_ylim(-0.05, 1.13)  # room above 1.0 for two label lines
    else:
        ax.margins(0.12)
    legend_outside(ax, title="run", fontsize=8)
    return Plot(slug, title, caption + " Points are labelled with language codes (in the run's colour; dark grey: "
                "every run has that language at that point).", render(fig))

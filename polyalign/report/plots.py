"""Report figures (matplotlib, Agg canvas, PNG bytes at 110 dpi).

Figures are drawn on :class:`matplotlib.figure.Figure` with an Agg canvas directly (no
pyplot: no global state, no display needed). Colours are fixed per run order
(:data:`RUN_COLOURS`, Okabe-Ito colour-blind-safe palette) so a run has the same colour in
every figure; legends sit outside the axes; ``bbox_inches="tight"`` keeps them in the PNG.

- safety bars: the headline safety metric per language, one bar per run;
- reward gap bars: each run's gap per language (and its reference gap, hatched, when given);
- gap vs safety: per language, a run's reward gap (x) against its safety metric (y);
  Pearson ``r = sum(dx*dy) / sqrt(sum(dx^2) * sum(dy^2))`` over all points in the title
  (and per run in the legend);
- retrieval: top-1 accuracy per layer, one line per language (solid pivot->x, dashed
  x->pivot; with more than 6 languages one line each: the mean of both), one panel per run;
- safety vs utility: per language and run, utility metric (x; ``accuracy`` when present)
  against safety metric (y), 0..1 axes for rates; with exactly two runs, grey arrows show
  each language's move from the first to the second;
- trade-off panels (when a run has ``over_refusal``): per language, each run's safety metric,
  utility metric and over-refusal as horizontal bars in three panels side by side;
- consistency heat map (when a run has a ``consistency`` matrix): pairwise verdict agreement
  between languages (:mod:`polyalign.report.consistency_plot`).
- fertility beside safety and the judge-agreement heat map (:mod:`polyalign.report.fertility_plot`,
  :mod:`polyalign.report.agreement_plot`).
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from polyalign.data.languages import language_name
from polyalign.report.load import RunData
from polyalign.report.tables import SAFETY_METRICS, direction, is_utility

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


def _render(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    return buf.getvalue()


def _label(code: str) -> str:
    return language_name(code)


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


def _legend_outside(ax, **kwargs) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False, **kwargs)


def _bar_axes(n_langs: int, n_series: int) -> tuple[Figure, object]:
    width = min(18.0, max(6.0, 1.2 + n_langs * (0.28 * n_series + 0.35)))
    fig = Figure(figsize=(width, 4.2))
    return fig, fig.add_subplot(1, 1, 1)


def _bars(ax, languages: list[str], series: list[tuple[str, dict[str, float | None], dict]], dominant: str | None) -> None:
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
    ax.set_xticklabels([_label(lang) for lang in languages], rotation=35 if rotate else 0, ha="right" if rotate else "center")
    for tick, lang in zip(ax.get_xticklabels(), languages):
        if lang == dominant:
            tick.set_fontweight("bold")
    ax.set_xlim(-0.6, len(languages) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    _legend_outside(ax)


def safety_metric(runs: list[RunData]) -> str | None:
    """The first of :data:`SAFETY_METRICS` that some run has a number for."""
    for metric in SAFETY_METRICS:
        if any(v is not None for run in runs for v in run.metric(metric).values()):
            return metric
    return None


def safety_bars(runs: list[RunData], metric: str, languages: list[str], dominant: str | None) -> Plot:
    fig, ax = _bar_axes(len(languages), len(runs))
    series = [(run.name, {k: v for k, v in run.metric(metric).items()}, {"color": run_colour(i)})
              for i, run in enumerate(runs)]
    _bars(ax, languages, series, dominant)
    title = f"{SHORT_NAMES.get(metric, metric)} per language".capitalize()
    ax.set_title(title)
    ax.set_ylabel(axis_label(metric))
    ax.set_xlabel("language" + (f" (bold: dominant, {language_name(dominant)})" if dominant in languages else ""))
    ax.set_ylim(bottom=0)
    return Plot(f"{metric}_per_language", title, f"{metric} per language, one bar per run.", _render(fig))


def reward_gap_bars(runs: list[RunData], languages: list[str], dominant: str | None) -> Plot | None:
    series = []
    for i, run in enumerate(runs):
        if not run.reward_gap:
            continue
        ref = {lang: v["reference_gap"] for lang, v in run.reward_gap.items()}
        has_ref = any(v is not None for v in ref.values())
        if has_ref:
            series.append((f"{run.name}: reference (before)", ref,
                           {"color": "white", "edgecolor": run_colour(i), "hatch": "///", "linewidth": 1.0}))
        pol = {lang: v["policy_gap"] for lang, v in run.reward_gap.items()}
        if any(v is not None for v in pol.values()):
            series.append((run.name + (": policy (after)" if has_ref else ""), pol, {"color": run_colour(i)}))
    if not series:
        return None
    langs = [lang for lang in languages if any(lang in s[1] for s in series)]
    langs += [lang for s in series for lang in s[1] if lang not in langs]
    langs = list(dict.fromkeys(langs))
    fig, ax = _bar_axes(len(langs), len(series))
    _bars(ax, langs, series, dominant)
    ax.axhline(0, color="black", linewidth=0.8)
    title = "Reward gap per language (before / after)"
    ax.set_title(title)
    ax.set_ylabel("reward gap\navg_logp(chosen) - avg_logp(rejected)", fontsize=9)
    ax.set_xlabel("language")
    return Plot("reward_gap_per_language", title, "Length-normalised reward gap per language; hatched bars are the "
                "reference model's gap (before training), filled bars the run's model.", _render(fig))


def _unit(values: list[float]) -> bool:
    """All values in [0, 1]: a rate, drawn on the full 0..1 axis so runs compare at a glance."""
    return bool(values) and all(0.0 <= v <= 1.0 for v in values)


def _scatter(title: str, xlabel: str, ylabel: str, points: list[tuple[int, str, list[tuple[str, float, float]]]],
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
    _legend_outside(ax, title="run", fontsize=8)
    return Plot(slug, title, caption + " Points are labelled with language codes (in the run's colour; dark grey: "
                "every run has that language at that point).", _render(fig))


def gap_vs_safety(runs: list[RunData], metric: str) -> Plot | None:
    points = []
    for i, run in enumerate(runs):
        if not run.reward_gap:
            continue
        values = run.metric(metric)
        pts = [(lang, g["policy_gap"], values[lang]) for lang, g in run.reward_gap.items()
               if g["policy_gap"] is not None and values.get(lang) is not None]
        if pts:
            points.append((i, run.name, pts))
    if not points:
        return None
    return _scatter(f"Reward gap vs {SHORT_NAMES.get(metric, metric)}", "reward gap of the run's model (length-normalised)",
                    axis_label(metric), points,
                    f"reward_gap_vs_{metric}", f"Each point is a language: its reward gap under the run's model "
                    f"against its {metric}.", with_r=True)


def retrieval_lines(runs: list[RunData]) -> Plot | None:
    with_ret = [(i, run) for i, run in enumerate(runs) if run.retrieval]
    if not with_ret:
        return None
    langs = list(dict.fromkeys(lang for _, run in with_ret for lang in run.retrieval))
    colour = {lang: LANGUAGE_COLOURS[k % len(LANGUAGE_COLOURS)] for k, lang in enumerate(langs)}
    fig = Figure(figsize=(min(16.0, 1.5 + 5.2 * len(with_ret)), 4.2))
    axes = [fig.add_subplot(1, len(with_ret), k + 1) for k in range(len(with_ret))]
    # Up to 6 languages: both directions (solid / dashed); more: their mean only, or the panel is a tangle.
    both = len(langs) <= 6
    for ax, (i, run) in zip(axes, with_ret):
        for lang, v in run.retrieval.items():
            curves = [(v["acc_pivot_to_x"], "-"), (v["acc_x_to_pivot"], "--")]
            if not both:
                mean = [None if a is None or b is None else (a + b) / 2 for a, b in zip(*(c for c, _ in curves))]
                curves = [(mean, "-")]
            for values, style in curves:
                pts = [(x, y) for x, y in zip(v["layers"], values) if y is not None]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colour[lang], linewidth=1.4,
                            marker="o" if len(pts) <= 12 else None, markersize=3)
        pivot = language_name(run.retrieval_pivot) if run.retrieval_pivot else "pivot"
        ax.set_title(f"{run.name} (pivot: {pivot})", color=run_colour(i), fontsize=10)
        ax.set_xlabel("layer (hidden-state index, 0 = embeddings)")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 retrieval accuracy")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colour[lang], linewidth=2, label=_label(lang)) for lang in langs]
    if both:
        handles += [Line2D([], [], color="black", linestyle="-", label="pivot → language"),
                    Line2D([], [], color="black", linestyle="--", label="language → pivot")]
    axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False,
                    fontsize=8, title="language / direction" if both else "language")
    title = "Bilingual retrieval accuracy per layer"
    fig.suptitle(title)
    how = "solid: pivot → language, dashed: language → pivot" if both else "mean of both directions"
    return Plot("retrieval_per_layer", title, "Top-1 retrieval accuracy between the pivot and each language, per "
                f"layer; {how}.", _render(fig))


def utility_metric(runs: list[RunData]) -> str | None:
    """``accuracy`` (what ``polyalign eval --suite utility`` writes) when present, else the first utility metric."""
    present = [m for run in runs for row in run.per_language.values() for m in row if is_utility(m)]
    return "accuracy" if "accuracy" in present else next(iter(present), None)


def safety_vs_utility(runs: list[RunData], metric: str) -> Plot | None:
    utility = utility_metric(runs)
    if utility is None:
        return None
    points = []
    for i, run in enumerate(runs):
        s, u = run.metric(metric), run.metric(utility)
        pts = [(lang, u[lang], s[lang]) for lang in run.languages
               if s.get(lang) is not None and u.get(lang) is not None]
        if pts:
            points.append((i, run.name, pts))
    if not points:
        return None
    title = f"{SHORT_NAMES.get(metric, metric)} vs {utility} per language".capitalize()
    unit = _unit([v for _, _, pts in points for p in pts for v in p[1:]])
    return _scatter(title, axis_label(utility).replace("\n", " "), axis_label(metric), points, f"{metric}_vs_{utility}",
                    f"Safety ({metric}) against utility ({utility}), one point per language and run"
                    + (f"; grey arrows go from {runs[0].name} to {runs[points[1][0]].name} for the same language."
                       if len(points) == 2 and points[0][0] == 0 else "."), with_r=False, unit_axes=unit)


def tradeoff_panels(runs: list[RunData], metric: str, languages: list[str], dominant: str | None) -> Plot | None:
    """Paired bars: one panel each for safety, utility and over-refusal; languages are rows.

    Drawn when some run has ``over_refusal`` (three metrics: one scatter cannot show them).
    """
    if not any(v is not None for run in runs for v in run.metric("over_refusal").values()):
        return None
    utility = utility_metric(runs)
    panels = [m for m in (metric, utility, "over_refusal") if m]
    langs = [lang for lang in languages if any(lang in run.per_language for run in runs)]
    height = 1.3 + len(langs) * (0.22 * len(runs) + 0.25)
    fig = Figure(figsize=(3.6 * len(panels) + 1.6, max(3.2, height)))
    axes = [fig.add_subplot(1, len(panels), k + 1) for k in range(len(panels))]
    bar = 0.8 / len(runs)
    for ax, name in zip(axes, panels):
        values_all = []
        for i, run in enumerate(runs):
            values = run.metric(name)
            # Row 0 (the dominant language) on top; run 0 the top bar of each group.
            ys = [len(langs) - 1 - k + 0.4 - bar * (i + 0.5) for k in range(len(langs))]
            have = [(y, values[lang]) for y, lang in zip(ys, langs) if values.get(lang) is not None]
            values_all += [v for _, v in have]
            ax.barh([y for y, _ in have], [v for _, v in have], height=bar * 0.9, color=run_colour(i))
            for y, lang in zip(ys, langs):
                if values.get(lang) is None:
                    ax.text(0.01, y, "n/a", va="center", fontsize=7, color="#555555", transform=ax.get_yaxis_transform())
            for y, v in have:
                ax.text(v, y, f" {v:.2f}", va="center", fontsize=6.5, color="#333333")
        ax.set_yticks(range(len(langs)))
        ax.set_yticklabels(list(reversed([_label(lang) for lang in langs])) if ax is axes[0] else [])
        for tick, lang in zip(ax.get_yticklabels(), reversed(langs)):
            tick.set_fontweight("bold" if lang == dominant else "normal")
        ax.set_ylim(-0.6, len(langs) - 0.4)
        if _unit(values_all):
            ax.set_xlim(0, 1.15)  # room for the value labels
        ax.set_title(axis_label(name).replace("\n", " "), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    from matplotlib.patches import Patch

    # Explicit handles: a run without bars in the last panel still gets its own colour.
    axes[-1].legend(handles=[Patch(color=run_colour(i), label=run.name) for i, run in enumerate(runs)], title="run",
                    loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False, fontsize=8)
    title = "Safety, utility and over-refusal per language"
    fig.suptitle(title)
    return Plot("tradeoff_per_language", title, f"Per language, each run's {metric} (safety), {utility or 'utility'} "
                "and over-refusal (refusals on benign prompts) side by side; n/a: not measured.", _render(fig))


def build_plots(runs: list[RunData], languages: list[str], dominant: str | None) -> list[Plot]:
    """Every figure the runs have data for, in report order."""
    plots: list[Plot | None] = []
    metric = safety_metric(runs)
    if metric:
        plots.append(safety_bars(runs, metric, languages, dominant))
    plots.append(reward_gap_bars(runs, languages, dominant))
    if metric:
        plots.append(gap_vs_safety(runs, metric))
    plots.append(retrieval_lines(runs))
    if metric:
        plots.append(safety_vs_utility(runs, metric))
        plots.append(tradeoff_panels(runs, metric, languages, dominant))
    from polyalign.report.consistency_plot import consistency_heatmap  # imports this module

    plots.append(consistency_heatmap(runs))
    from polyalign.report.agreement_plot import agreement_heatmap
    from polyalign.report.fertility_plot import fertility_beside_safety

    if metric:
        plots.append(fertility_beside_safety(runs, metric, languages, dominant))
    plots.append(agreement_heatmap(runs))
    return [p for p in plots if p is not None]

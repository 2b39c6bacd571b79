"""The report's figures, in report order (:func:`build_plots`); drawing primitives, colours and
:class:`~polyalign.report.figures.Plot` are in :mod:`polyalign.report.figures`.

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

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from polyalign.data.languages import language_name
from polyalign.report.agreement_plot import agreement_heatmap
from polyalign.report.consistency_plot import consistency_heatmap
from polyalign.report.fertility_plot import fertility_beside_safety
from polyalign.report.figures import (
    LANGUAGE_COLOURS,
    SHORT_NAMES,
    Plot,
    axis_label,
    bar_axes,
    bars,
    render,
    run_colour,
    scatter,
    unit_range,
)
from polyalign.report.load import RunData
from polyalign.report.tables import SAFETY_METRICS, is_utility


def safety_metric(runs: list[RunData]) -> str | None:
    """The first of :data:`SAFETY_METRICS` that some run has a number for."""
    for metric in SAFETY_METRICS:
        if any(v is not None for run in runs for v in run.metric(metric).values()):
            return metric
    return None


def safety_bars(runs: list[RunData], metric: str, languages: list[str], dominant: str | None) -> Plot:
    fig, ax = bar_axes(len(languages), len(runs))
    series = [(run.name, {k: v for k, v in run.metric(metric).items()}, {"color": run_colour(i)})
              for i, run in enumerate(runs)]
    bars(ax, languages, series, dominant)
    title = f"{SHORT_NAMES.get(metric, metric)} per language".capitalize()
    ax.set_title(title)
    ax.set_ylabel(axis_label(metric))
    ax.set_xlabel("language" + (f" (bold: dominant, {language_name(dominant)})" if dominant in languages else ""))
    ax.set_ylim(bottom=0)
    return Plot(f"{metric}_per_language", title, f"{metric} per language, one bar per run.", render(fig))


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
    fig, ax = bar_axes(len(langs), len(series))
    bars(ax, langs, series, dominant)
    ax.axhline(0, color="black", linewidth=0.8)
    title = "Reward gap per language (before / after)"
    ax.set_title(title)
    ax.set_ylabel("reward gap\navg_logp(chosen) - avg_logp(rejected)", fontsize=9)
    ax.set_xlabel("language")
    return Plot("reward_gap_per_language", title, "Length-normalised reward gap per language; hatched bars are the "
                "reference model's gap (before training), filled bars the run's model.", render(fig))


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
    return scatter(f"Reward gap vs {SHORT_NAMES.get(metric, metric)}",
                   "reward gap of the run's model (length-normalised)", axis_label(metric), points,
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
    handles = [Line2D([], [], color=colour[lang], linewidth=2, label=language_name(lang)) for lang in langs]
    if both:
        handles += [Line2D([], [], color="black", linestyle="-", label="pivot → language"),
                    Line2D([], [], color="black", linestyle="--", label="language → pivot")]
    axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False,
                    fontsize=8, title="language / direction" if both else "language")
    title = "Bilingual retrieval accuracy per layer"
    fig.suptitle(title)
    how = "solid: pivot → language, dashed: language → pivot" if both else "mean of both directions"
    return Plot("retrieval_per_layer", title, "Top-1 retrieval accuracy between the pivot and each language, per "
                f"layer; {how}.", render(fig))


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
    unit = unit_range([v for _, _, pts in points for p in pts for v in p[1:]])
    return scatter(title, axis_label(utility).replace("\n", " "), axis_label(metric), points, f"{metric}_vs_{utility}",
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
                    ax.text(0.01, y, "n/a", va="center", fontsize=7, color="#555555",
                            transform=ax.get_yaxis_transform())
            for y, v in have:
                ax.text(v, y, f" {v:.2f}", va="center", fontsize=6.5, color="#333333")
        ax.set_yticks(range(len(langs)))
        ax.set_yticklabels(list(reversed([language_name(lang) for lang in langs])) if ax is axes[0] else [])
        for tick, lang in zip(ax.get_yticklabels(), reversed(langs)):
            tick.set_fontweight("bold" if lang == dominant else "normal")
        ax.set_ylim(-0.6, len(langs) - 0.4)
        if unit_range(values_all):
            ax.set_xlim(0, 1.15)  # room for the value labels
        ax.set_title(axis_label(name).replace("\n", " "), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    # Explicit handles: a run without bars in the last panel still gets its own colour.
    axes[-1].legend(handles=[Patch(color=run_colour(i), label=run.name) for i, run in enumerate(runs)], title="run",
                    loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False, fontsize=8)
    title = "Safety, utility and over-refusal per language"
    fig.suptitle(title)
    return Plot("tradeoff_per_language", title, f"Per language, each run's {metric} (safety), {utility or 'utility'} "
                "and over-refusal (refusals on benign prompts) side by side; n/a: not measured.", render(fig))


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
    plots.append(consistency_heatmap(runs))
    if metric:
        plots.append(fertility_beside_safety(runs, metric, languages, dominant))
    plots.append(agreement_heatmap(runs))
    return [p for p in plots if p is not None]

"""The cross-lingual consistency heat map: one panel per run with a ``consistency`` section.

Cell (row A, column B) = share of parallel items whose verdicts in A and B agree (over the
items with a verdict in both; :mod:`polyalign.evaluation.consistency`), written in the
cell; undefined cells are grey and marked ``–``. Fixed 0..1 colour scale (colour-blind-safe
``cividis``) so panels and reports compare; the dominant language's label is bold.
"""

from __future__ import annotations

import math

from matplotlib import colormaps
from matplotlib.figure import Figure

from polyalign.data.languages import language_name
from polyalign.report.figures import Plot, render
from polyalign.report.load import RunData


def consistency_heatmap(runs: list[RunData]) -> Plot | None:
    """The heat map, or ``None`` when no run has a consistency matrix."""
    have = [run for run in runs if run.consistency]
    if not have:
        return None
    size = max(len(run.consistency["languages"]) for run in have)
    side = 1.0 + 0.45 * size
    fig = Figure(figsize=(side * len(have) + 1.2, side + 0.6))
    axes = fig.subplots(1, len(have), squeeze=False)[0]
    image = None
    cmap = colormaps["cividis"].with_extremes(bad="#dddddd")
    for ax, run in zip(axes, have):
        langs, rows = run.consistency["languages"], run.consistency["agreement"]
        values = [[math.nan if v is None else v for v in row] for row in rows]
        image = ax.imshow(values, cmap=cmap, vmin=0.0, vmax=1.0)
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                ax.text(j, i, "–" if v is None else f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if v is not None and v > 0.6 else "white" if v is not None else "#555555")
        names = [language_name(lang) for lang in langs]
        ax.set_xticks(range(len(langs)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(langs)), names, fontsize=8)
        for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
            for tick, lang in zip(ticks, langs):
                tick.set_fontweight("bold" if lang == run.consistency["dominant"] else "normal")
        ax.set_title(run.name, fontsize=9)
    fig.colorbar(image, ax=list(axes), fraction=0.04, pad=0.02, label="verdict agreement")
    title = "Cross-lingual consistency of safety verdicts"
    caption = ("Share of parallel items on which two languages get the same verdict (safe / unsafe; items without a "
               "verdict in both left out). Per-language flips against the dominant language (bold), both ways, and "
               "the flipped items with their outputs are in each run's results.json and consistency_flips.jsonl.")
    return Plot("consistency_heatmap", title, caption, render(fig))

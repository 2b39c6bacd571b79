"""The judge-agreement heat map: Cohen's kappa per judge pair and language, one panel per run.

Read from results.json's ``agreement`` (``polyalign eval --judge a,b``;
:mod:`polyalign.evaluation.agreement`). Rows are judge pairs (``a vs b``), columns languages;
the cell holds kappa over all four label categories (safe / unsafe / invalid / error, an
unjudged item being ``error``). Undefined kappa (one label for everything) is grey and
``–``. Colour scale fixed at -1..1 (``RdBu``: red below chance, blue above) so panels and
reports compare. The plain statements (where the cheap offline judge disagrees with the
stronger one) go to the report's notes.
"""

from __future__ import annotations

import math

from matplotlib import colormaps
from matplotlib.figure import Figure

from polyalign.data.languages import language_name
from polyalign.report.figures import Plot, render
from polyalign.report.load import RunData


def agreement_heatmap(runs: list[RunData]) -> Plot | None:
    """The heat map (a :class:`~polyalign.report.figures.Plot`), or ``None`` when no run compared judges."""
    have = [run for run in runs if run.agreement]
    if not have:
        return None
    fig = Figure(figsize=(sum(1.6 + 0.55 * len(_languages(r)) for r in have) + 1.5,
                          1.4 + 0.45 * max(len(r.agreement["pairs"]) for r in have)))
    axes = fig.subplots(1, len(have), squeeze=False)[0]
    cmap = colormaps["RdBu"].with_extremes(bad="#dddddd")
    image = None
    for ax, run in zip(axes, have):
        langs, pairs = _languages(run), run.agreement["pairs"]
        values = [[_nan(p["kappa"].get(lang)) for lang in langs] for p in pairs]
        image = ax.imshow(values, cmap=cmap, vmin=-1.0, vmax=1.0, aspect="auto")
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(j, i, "–" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="#555555" if math.isnan(v) else "white" if abs(v) > 0.6 else "black")
        ax.set_xticks(range(len(langs)), [language_name(lang) for lang in langs], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(pairs)), [p["label"] for p in pairs], fontsize=8)
        ax.set_title(f"{run.name} (primary: {run.agreement['primary']})", fontsize=9)
    fig.colorbar(image, ax=list(axes), fraction=0.04, pad=0.02, label="Cohen's kappa")
    title = "Judge agreement per language"
    caption = ("Cohen's kappa between two judges on the same generations, per language (labels safe / unsafe / "
               "invalid / error; an item a judge could not judge counts as error, never as safe); grey: undefined. "
               "The primary (first) judge's verdicts give every other number in the report; confusion matrices are "
               "in each run's results.json 'agreement' and results.md, and the notes say where the cheap offline "
               "judge disagrees with the stronger one.")
    return Plot("judge_agreement", title, caption, render(fig))


def _languages(run: RunData) -> list[str]:
    return list(dict.fromkeys(lang for p in run.agreement["pairs"] for lang in p["kappa"]))


def _nan(value: float | None) -> float:
    return math.nan if value is None else value

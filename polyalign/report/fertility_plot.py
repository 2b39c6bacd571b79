"""Tokenizer fertility beside the safety results, per language.

Read from results.json ``metrics.per_language`` (``polyalign eval`` writes
``tokens_per_char``, ``relative_tokens`` and ``n_prompts_over_context``;
:mod:`polyalign.data.fertility`). Top panel: tokens per character of the benchmark's prompts
under each run's tokenizer; bottom panel: the safety metric; the same language columns, so a
language that pays a large token premium can be read against its safety result.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from polyalign.report.figures import Plot, axis_label, bars, render, run_colour
from polyalign.report.load import RunData


def fertility_beside_safety(runs: list[RunData], metric: str, languages: list[str],
                            dominant: str | None) -> Plot | None:
    """The two-panel figure, or ``None`` when no run has ``tokens_per_char``."""
    if not any(run.metric("tokens_per_char") for run in runs):
        return None
    width = min(18.0, max(6.0, 1.2 + len(languages) * (0.28 * len(runs) + 0.35)))
    fig = Figure(figsize=(width, 7.6))
    top, bottom = fig.subplots(2, 1)
    for ax, name in ((top, "tokens_per_char"), (bottom, metric)):
        series = [(run.name, run.metric(name), {"color": run_colour(i)}) for i, run in enumerate(runs)]
        bars(ax, languages, series, dominant)  # the same language columns in both panels
        ax.set_ylabel(axis_label(name))
    over = {run.name: {lang: v for lang, v in run.metric("n_prompts_over_context").items() if v}
            for run in runs}
    over_text = "; ".join(f"{name}: " + ", ".join(f"{lang} {int(v)}" for lang, v in langs.items())
                          for name, langs in over.items() if langs)
    title = "Tokenizer fertility beside safety, per language"
    fig.suptitle(title)
    caption = (f"Top: tokens per character of the benchmark prompts under each run's tokenizer (content tokens, no "
               f"special tokens); below: {metric}. relative_tokens (the token premium against en) and the prompts "
               "longer than the context leaves are in the tables. "
               + (f"Prompts longer than the context leaves: {over_text}." if over_text else
                  "No prompt was longer than the context leaves."))
    return Plot("fertility_beside_safety", title, caption, render(fig))

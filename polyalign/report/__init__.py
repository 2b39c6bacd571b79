"""``polyalign report``: per-language tables and figures for one or more evaluation runs.

:func:`build_report` reads run folders (see :mod:`polyalign.report.load` for exactly which
files and keys), builds one table per metric with the runs side by side (plus a delta
table against the first run when there are several, see :mod:`polyalign.report.tables`),
draws the figures the data allows (:mod:`polyalign.report.plots`) and writes, atomically:

- ``OUT_DIR/report.html``: self-contained (inline CSS, PNGs as base64 data URIs);
- ``OUT_DIR/report.md``: Markdown tables, linking ``OUT_DIR/<figure>.png`` written beside it.
"""

from __future__ import annotations

from pathlib import Path

from polyalign.data.languages import canonical_language
from polyalign.errors import UserError
from polyalign.io import atomic_write_bytes, atomic_write_text
from polyalign.report.figures import Plot, safe_slug
from polyalign.report.html import Report, render_html, render_markdown
from polyalign.report.load import RunData, load_run, load_runs
from polyalign.report.plots import build_plots
from polyalign.report.tables import Table, analysis_tables, build_tables, dominant_warnings, language_order

__all__ = ["Plot", "Report", "RunData", "Table", "build_report", "load_run", "load_runs", "make_report"]


def make_report(runs: list[RunData], *, title: str | None = None, dominant: str | None = "en") -> Report:
    """Tables, figures, warnings and notes for already-loaded runs (nothing is written)."""
    if dominant is not None:
        try:
            dominant = canonical_language(dominant)
        except ValueError:
            raise UserError(f"not a language code: {dominant!r}", field="dominant") from None
    languages = language_order(runs, dominant)
    tables = build_tables(runs, dominant)
    metrics = [t.metric for t, _ in tables]
    notes = [n for run in runs for n in run.notes]
    if dominant is not None and dominant not in languages:
        notes.append(f"the dominant language {dominant!r} is in none of the runs: nothing highlighted")
    for run in runs:
        missing = [lang for lang in languages if lang not in run.per_language]
        if missing and len(runs) > 1:
            notes.append(f"{run.name}: no results for {', '.join(missing)} (shown as n/a)")
    if title is None:
        benchmarks = sorted({r.benchmark for r in runs if r.benchmark})
        title = "polyalign report" + (f": {', '.join(benchmarks)}" if benchmarks else "")
    return Report(title=title, runs=runs, dominant=dominant, tables=tables, analysis=analysis_tables(runs, dominant),
                  plots=build_plots(runs, languages, dominant), warnings=dominant_warnings(runs, metrics, dominant),
                  notes=notes)


def build_report(run_dirs: list[Path], out_dir: Path, *, names: list[str] | None = None, title: str | None = None,
                 dominant: str | None = "en") -> Path:
    """Read ``run_dirs``, write ``out_dir/report.html``, ``report.md`` and the figure PNGs.

    Returns the path of ``report.html``. ``names`` label the runs (default: the shortest
    trailing folder names that tell them apart); the first run is the baseline of the
    delta tables; ``dominant`` is the language highlighted and checked (None: none).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError("output path exists and is not a folder", file=out_dir)
    report = make_report(load_runs(list(run_dirs), names), title=title, dominant=dominant)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder: {exc.strerror or exc}", file=out_dir) from None
    image_files = {}
    root = out_dir.resolve()
    for plot in report.plots:
        name = f"{safe_slug(plot.slug)}.png"
        target = (out_dir / name).resolve()
        if target.parent != root:  # a name from results.json must never leave the report folder
            raise UserError(f"figure name {plot.slug!r} would be written outside the report folder", file=out_dir)
        image_files[plot.slug] = name
        atomic_write_bytes(target, plot.png)
    atomic_write_text(out_dir / "report.md", render_markdown(report, image_files))
    html_path = out_dir / "report.html"
    atomic_write_text(html_path, render_html(report))
    return html_path

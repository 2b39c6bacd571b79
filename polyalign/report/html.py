"""Render a report as one self-contained HTML page and as Markdown.

The HTML page has inline CSS and every figure embedded as a ``data:image/png;base64`` URI:
no scripts, no external fonts, style sheets or images, so it opens offline and can be
mailed as one file. The Markdown page links PNG files written beside it. All text from
the inputs (run names, metric names, paths) is HTML-escaped / Markdown-escaped.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field

from polyalign.data.languages import language_name
from polyalign.report.figures import Plot, run_colour
from polyalign.report.load import RunData
from polyalign.report.tables import MISSING, UNDEFINED, Table

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-bottom: .2em; } p.desc { color: #555; margin-top: 0; font-size: .92em; }
table { border-collapse: collapse; margin: .5em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f2f2f2; } td.label, th.label { text-align: left; }
tr.dominant td { background: #fff3c4; font-weight: 600; }
tr.stat td { background: #f7f7f7; font-style: italic; } tr.stat.first td { border-top: 2px solid #888; }
td.better { color: #1a7f37; } td.worse { color: #c0392b; font-weight: 700; }
.swatch { display: inline-block; width: .8em; height: .8em; margin-right: .35em; vertical-align: middle; }
.warn { background: #fdecea; border-left: 4px solid #c0392b; padding: .5em 1em; }
.notes { background: #f4f6f8; border-left: 4px solid #888; padding: .5em 1em; font-size: .9em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; } code { background: #f2f2f2; padding: 0 .2em; }
.tables { display: flex; flex-wrap: wrap; gap: 0 2em; align-items: flex-start; }
"""


@dataclass
class Report:
    """Everything a report shows; built by :func:`polyalign.report.build_report`."""

    title: str
    runs: list[RunData]
    dominant: str | None
    tables: list[tuple[Table, Table | None]]
    analysis: list[Table]
    plots: list[Plot]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table_html(table: Table, run_index: dict[str, int]) -> str:
    head = "".join(
        f'<th><span class="swatch" style="background:{run_colour(run_index[c])}"></span>{_e(c)}</th>'
        if c in run_index else f"<th>{_e(c)}</th>" for c in table.columns
    )
    rows, first_stat = [], True
    for row in table.rows:
        classes = []
        if row.kind == "stat":
            classes.append("stat")
            if first_stat:
                classes.append("first")
                first_stat = False
        if row.dominant:
            classes.append("dominant")
        cells = "".join(
            f'<td class="{mark}">{_e(text)}</td>' if mark else f"<td>{_e(text)}</td>"
            for text, mark in zip(row.texts, row.marks or [""] * len(row.texts))
        )
        attr = f' class="{" ".join(classes)}"' if classes else ""
        rows.append(f'<tr{attr}><td class="label">{_e(row.label)}</td>{cells}</tr>')
    anchor = "t-" + re.sub(r"[^A-Za-z0-9_-]+", "-", table.title).strip("-")
    return (f'<div><h3 id="{_e(anchor)}">{_e(table.title)}</h3><p class="desc">{_e(table.description)}</p>'
            f'<table><thead><tr><th class="label">language</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _runs_html(runs: list[RunData]) -> str:
    rows = []
    for i, run in enumerate(runs):
        extras = [x for x in ("reward_gap.json" if run.reward_gap else "",
                              "retrieval.json" if run.retrieval else "") if x]
        rows.append(
            f'<tr><td class="label"><span class="swatch" style="background:{run_colour(i)}"></span>{_e(run.name)}</td>'
            f'<td class="label"><code>{_e(run.path)}</code></td><td class="label">{_e(run.model or "?")}</td>'
            f'<td class="label">{_e(run.benchmark or "?")}</td><td class="label">{_e(run.judge or "?")}</td>'
            f'<td>{len(run.languages)}</td><td class="label">{_e(", ".join(extras) or "none")}</td></tr>')
    return ('<table><thead><tr><th class="label">run</th><th class="label">folder</th><th class="label">model</th>'
            '<th class="label">benchmark</th><th class="label">judge</th><th>languages</th>'
            f'<th class="label">analyses</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def render_html(report: Report) -> str:
    """The whole report as one self-contained HTML document."""
    run_index = {run.name: i for i, run in enumerate(report.runs)}
    dominant = f"{language_name(report.dominant)} ({report.dominant})" if report.dominant else "none"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(report.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(report.title)}</h1>", "<h2>Runs</h2>", _runs_html(report.runs),
        f'<p class="desc">Dominant language: <b>{_e(dominant)}</b> (highlighted rows). '
        f"Cells: <code>{UNDEFINED}</code> = metric undefined for that language (e.g. nothing judged); "
        f"<code>{MISSING}</code> = the run has no such language or metric. Spread rows use the population "
        "standard deviation over each run's languages.</p>",
    ]
    if report.warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in report.warnings)
        parts.append('<div class="warn"><b>Dominant language gets worse while the mean improves:</b>'
                     f"<ul>{items}</ul></div>")
    if report.plots:
        parts.append("<h2>Figures</h2>")
        for plot in report.plots:
            data = base64.b64encode(plot.png).decode("ascii")
            parts.append(f'<figure id="fig-{_e(plot.slug)}"><img alt="{_e(plot.title)}" '
                         f'src="data:image/png;base64,{data}"><figcaption>{_e(plot.caption)}</figcaption></figure>')
    parts.append("<h2>Per-language metrics</h2>")
    for table, delta in report.tables:
        parts.append('<div class="tables">' + _table_html(table, run_index)
                     + (_table_html(delta, run_index) if delta else "") + "</div>")
    if report.analysis:
        parts.append("<h2>Analyses</h2>")
        parts += [_table_html(t, run_index) for t in report.analysis]
    if report.notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in report.notes)
        parts.append(f'<h2>Notes</h2><div class="notes"><ul>{items}</ul></div>')
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _md(text: object) -> str:
    """Escape Markdown table-breaking characters."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table_md(table: Table) -> list[str]:
    lines = [f"### {_md(table.title)}", "", f"_{_md(table.description)}_" if table.description else "", "",
             "| language | " + " | ".join(_md(c) for c in table.columns) + " |",
             "|---|" + "---:|" * len(table.columns)]
    for row in table.rows:
        label = f"**{_md(row.label)}**" if row.dominant else _md(row.label)
        if row.kind == "stat":
            label = f"_{label}_"
        cells = [f"{_md(t)} ({m})" if m else _md(t) for t, m in zip(row.texts, row.marks or [""] * len(row.texts))]
        if row.dominant:
            cells = [f"**{c}**" for c in cells]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def render_markdown(report: Report, image_files: dict[str, str]) -> str:
    """The report as Markdown; ``image_files[slug]`` is each figure's PNG path relative to the page."""
    dominant = f"{language_name(report.dominant)} ({report.dominant})" if report.dominant else "none"
    lines = [f"# {_md(report.title)}", "", "## Runs", "", "| run | folder | model | benchmark | judge | languages |",
             "|---|---|---|---|---|---:|"]
    for run in report.runs:
        lines.append(f"| {_md(run.name)} | `{_md(run.path)}` | {_md(run.model or '?')} | {_md(run.benchmark or '?')} | "
                     f"{_md(run.judge or '?')} | {len(run.languages)} |")
    lines += ["", f"Dominant language: **{_md(dominant)}** (bold rows). `{UNDEFINED}` = metric undefined for that "
              f"language; `{MISSING}` = the run has no such language or metric. Spread rows use the population "
              "standard deviation over each run's languages.", ""]
    if report.warnings:
        lines += ["> **Dominant language gets worse while the mean improves:**", ">"]
        lines += [f"> - {_md(w)}" for w in report.warnings] + [""]
    if report.plots:
        lines += ["## Figures", ""]
        for plot in report.plots:
            lines += [f"![{_md(plot.title)}]({image_files[plot.slug]})", "", f"_{_md(plot.caption)}_", ""]
    lines += ["## Per-language metrics", ""]
    for table, delta in report.tables:
        lines += _table_md(table)
        if delta:
            lines += _table_md(delta)
    if report.analysis:
        lines += ["## Analyses", ""]
        for t in report.analysis:
            lines += _table_md(t)
    if report.notes:
        lines += ["## Notes", ""] + [f"- {_md(n)}" for n in report.notes] + [""]
    return "\n".join(lines)

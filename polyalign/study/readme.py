"""The README's study block: rendered from a committed ``results/study/summary.json``, and its check.

``polyalign study --publish`` stores the finished study's ``study.json`` (machine paths
dropped) as :data:`SUMMARY_FILE` and rewrites the README's block between
:data:`~polyalign.study.table.BEGIN` and :data:`~polyalign.study.table.END` with
:func:`render_readme_block` of it; ``python -m polyalign.study.readme --check`` exits 1 when
the README block and the committed summary disagree (the demo's block works the same way,
:mod:`polyalign.toyworld.readme_tables`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from polyalign.errors import UserError
from polyalign.io import atomic_write_json, marked_block, rewrite_marked_block
from polyalign.provenance import REPO_ROOT
from polyalign.study.cost import budget_verdict, predict
from polyalign.study.recipe import load_recipe
from polyalign.study.runner import expected_stages
from polyalign.study.table import BEGIN, END, LABELS, group_table, results_table

SUMMARY_FILE = REPO_ROOT / "results" / "study" / "summary.json"
README = REPO_ROOT / "README.md"


def published(summary: dict[str, Any]) -> dict[str, Any]:
    """The study summary without example texts (harmful content stays in the run's study.md)."""
    out = {k: v for k, v in summary.items() if k != "examples"}
    if out.get("probes"):  # the analysis model's name, not this machine's cache path
        out["probes"] = {**out["probes"], "model": Path(str(out["probes"]["model"])).name}
    out["budget"] = budget(out)
    return out


def budget(summary: dict[str, Any]) -> dict[str, Any]:
    """The run's cost vs its recipe's ``budget_minutes``; for a quick run also the full recipe's
    predicted cost from this run's stage records (:mod:`polyalign.study.cost`)."""
    values = summary["recipe"]["values"]
    out: dict[str, Any] = {"measured": budget_verdict(summary["cost"], values.get("budget_minutes"))}
    if summary["recipe"]["quick"] and not summary["cost"].get("stages_missing"):
        full = load_recipe(REPO_ROOT / summary["recipe"]["path"])
        prediction = predict(full.values, expected_stages(full), summary)
        out["full_recipe_prediction"] = {**prediction, "budget_min": full.get("budget_minutes"),
                                         "met": prediction["idle_wall_min"] <= (full.get("budget_minutes") or 0)}
    return out


def render_readme_block(summary: dict[str, Any]) -> str:
    seeds, cost = summary["seeds"], summary["cost"]
    spread = f"mean ± sd over seeds {seeds}" if len(seeds) > 1 else f"one seed ({seeds[0]}), no seed spread"
    n = next((v.get("n_prompts") for m in summary["methods"].values() for v in m["per_language"].values()
              if v.get("n_prompts")), None)
    lines = [BEGIN, "",
             f"Unsafe rate on MultiJail ({n} seeded prompts per language, the same for every method; {spread}; "
             f"binomial standard error of one rate up to {0.5 / n ** 0.5:.2f}):" if n else "Unsafe rate on MultiJail:",
             "", results_table(summary).rstrip("\n"), "", group_table(summary).rstrip("\n"), ""]
    lines.append(_changes_line(summary))
    for metric, title in (("language_fidelity", "Language fidelity"), ("degenerate_rate", "Degenerate answers"),
                          ("reward_gap", "Reward gap (held-out target pairs)")):
        cells = []
        for method, data in summary["methods"].items():
            vals = [v[metric]["mean"] for v in data["per_language"].values()
                    if v.get(metric, {}).get("mean") is not None]
            cells.append(f"{LABELS.get(method, method)} {sum(vals) / len(vals):.2f}" if vals else f"{method} n/a")
        lines.append(f"- {title}, mean over languages: " + "; ".join(cells) + ".")
    overlap = summary["data"].get("overlap", {})
    lines.append(f"- MultiJail vs training prompts: {overlap.get('n_exact')} exact and {overlap.get('n_near')} near "
                 f"duplicates (Jaccard >= {overlap.get('near_threshold')}).")
    probes = summary.get("probes")
    if probes and probes.get("transfer"):
        t = probes["transfer"]
        rho = "n/a" if t["spearman"] is None else f"{t['spearman']:.2f}"
        shared = set(t["languages"])
        drops = probes["transfer_values"]
        lines.append(f"- Retrieval ({probes['model'].rsplit('/', 1)[-1]}, layer mean of the aligned cosine) vs English "
                     f"DPO's transfer (unsafe-rate drop from base) over the {t['n']} languages both cover: retrieval "
                     f"ranks them {' > '.join(x for x in t['retrieval_rank'] if x in shared)}; transfer "
                     f"{', '.join(f'{x} {drops[x]:+.2f}' for x in t['transfer_rank'] if x in shared)}; Spearman {rho}"
                     + (" (undefined: the same transfer in every language)." if t["spearman"] is None else "."))
    if probes:
        col = probes["collinearity"]
        lines.append(f"- Collinearity (rank-1 share, {col['n_prompts']} MultiJail items x {len(col['languages'])} "
                     f"languages), layer mean {col['rank1_share_layer_mean']:.3f}.")
    load = cost["load_average_1min"]
    git = summary.get("git") or {}
    missing = cost.get("stages_missing") or []
    if missing:
        lines += ["", f"**Partial study: {len(missing)} stage(s) not finished** ({', '.join(missing)}); the table "
                  "shows the finished ones only."]
    what = "sum of the finished stages" if cost.get("from_stage_records") else "the whole command"
    lines += ["", *_budget_lines(summary.get("budget")),
              f"Cost ({what}): {cost['wall_s'] / 60:.1f} min wall, {cost['cpu_s'] / 60:.1f} CPU-min, peak memory "
              f"{cost['peak_rss_mib'] / 1024:.2f} GiB, {cost['threads']} threads (OpenMP waits "
              f"{cost.get('omp_wait_policy') or 'default'}), 1-minute load {load['start']} at the "
              f"start and {load['end']} at the end ({'quick' if summary['recipe']['quick'] else 'full'} recipe "
              f"{summary['recipe']['path']}, commit {git.get('commit', '?')[:7]}"
              f"{' + local changes' if git.get('dirty') else ''}"
              f"; stages reused from an earlier run: {len(cost['stages_skipped'])}).", "", END]
    return "\n".join(lines)


def _changes_line(summary: dict[str, Any]) -> str:
    """Per trained method: the languages whose mean unsafe rate differs from base, with the change."""
    methods = summary["methods"]
    if "base" not in methods:
        return "- Change from base: no base evaluation."
    base = methods["base"]["per_language"]
    parts = []
    for method, data in methods.items():
        if method == "base":
            continue
        diffs = {}
        for lang, entry in data["per_language"].items():
            after, before = entry["unsafe_rate"]["mean"], base.get(lang, {}).get("unsafe_rate", {}).get("mean")
            if after is not None and before is not None and abs(after - before) > 1e-9:
                diffs[lang] = after - before
        n = sum(1 for e in data["per_language"].values() if e["unsafe_rate"]["mean"] is not None)
        changed = ", ".join(f"{lang} {d:+.2f}" for lang, d in diffs.items()) or "none"
        parts.append(f"{LABELS.get(method, method)}: {len(diffs)} of {n} languages changed ({changed})")
    return "- Unsafe rate changed from base (negative = safer): " + "; ".join(parts) + "."


def _met(flag: bool | None) -> str:
    return "no budget set" if flag is None else ("**met**" if flag else "**not met**")


def _budget_lines(budget: dict[str, Any] | None) -> list[str]:
    """The budget sentence(s): CPU-min / 2 = the idle-machine wall estimate (the machine is shared)."""
    if not budget:
        return []
    m = budget["measured"]
    lines = [f"Budget: {m['cpu_min']:.1f} CPU-min / 2 cores = {m['idle_wall_min']:.1f} min, the idle-machine wall "
             f"estimate, against a budget of {m['budget_min']} min: {_met(m['met'])}."]
    p = budget.get("full_recipe_prediction")
    if p:
        slowest = max(p["per_stage"], key=p["per_stage"].get)
        lines[0] += (f" The full recipe (`make study`), predicted from this run's stage costs scaled by each stage's "
                     f"work (polyalign/study/cost.py; fixed costs scaled too, so an overestimate; not a measurement): "
                     f"{p['cpu_s'] / 60:.0f} CPU-min = {p['idle_wall_min']:.0f} min against {p['budget_min']} min: "
                     f"{_met(p['met'])} (largest stage: {slowest}, {p['per_stage'][slowest] / 60:.1f} CPU-min).")
    return lines + [""]


def publish(study_dir: Path, readme: Path = README, summary_file: Path = SUMMARY_FILE) -> bool:
    """Store the study's summary and rewrite the README block; returns whether the README changed."""
    try:
        summary = json.loads((study_dir / "study.json").read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read: {exc.strerror} (run the study first)", file=study_dir / "study.json") from None
    atomic_write_json(summary_file, published(summary))
    return rewrite_marked_block(readme, render_readme_block(published(summary)), BEGIN, END)


def check(readme: Path = README, summary_file: Path = SUMMARY_FILE) -> list[str]:
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    text = readme.read_text(encoding="utf-8")
    block = marked_block(text, BEGIN, END)
    if block != render_readme_block(summary):
        return [f"{readme}: the study block differs from what {summary_file} renders "
                "(rerun the study and `polyalign study --publish`)"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polyalign.study.readme", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README block and the summary disagree")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""Run every benchmark (each configuration in a fresh subprocess), write JSON and RESULTS.md.

``python benchmarks/run_all.py --size report`` (``make bench``) or ``--size quick``
(``make bench-quick``, seconds). Results: ``<out-dir>/<bench>.json`` (every configuration's raw
result plus the summary), ``<out-dir>/summary.json`` and the Markdown report (``--md``). Both
record the git commit the run started from and whether tracked files had uncommitted changes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402
from polyalign.provenance import git_state  # noqa: E402

#: bench name -> (module, implementations)
BENCHES: dict[str, tuple[str, list[str]]] = {
    "dpo": ("bench_dpo", ["polyalign", "trl", "trl_precompute"]),
    "mpo": ("bench_mpo", ["polyalign", "official"]),
    "mlc": ("bench_mlc", ["dpo", "dpo_mlc"]),
    "mfu": ("bench_mfu", ["polyalign"]),
    "generation": ("bench_generation", ["harness", "naive"]),
}
PROFILED = {("dpo", "polyalign"), ("dpo", "trl"), ("mpo", "polyalign"), ("mpo", "official")}
TARGETS = {"dpo_speedup_vs_trl": 2.0, "mpo_speedup_vs_official": 2.5, "mpo_rss_ratio_vs_official": 0.6,
           "mfu": 0.65, "generation_speedup_vs_naive": 4.0}


def _losses_close(a: list[float], b: list[float], dtype: str) -> tuple[bool, float]:
    """Every step's loss equal within ``1e-4 * max(1, |loss|)`` (fp32) or 2e-2 relative (bf16)."""
    tol = 1e-4 if dtype == "fp32" else 2e-2
    diffs = [abs(x - y) / max(1.0, abs(y)) for x, y in zip(a, b)]
    worst = max(diffs) if diffs else float("inf")
    return bool(len(a) == len(b) and len(a) > 0 and worst <= tol), worst


def _mpo_flop_ratios(p: dict[str, Any], o: dict[str, Any]) -> dict[str, Any]:
    """Counted matmul FLOPs of the official-style step over polyalign's and over the exact-step floor
    (``bench_mpo.exact_step_flop_floor``): the speed-up any implementation could reach if it ran
    its matmuls exactly as efficiently as the official-style step runs its own; and polyalign's
    memory floors (parameters + gradient + AdamW moments, or without a full gradient) over the
    official-style step's peak RSS."""
    if "matmul_flops_counted" not in o or "matmul_flops_counted" not in p:
        return {}
    official = o["matmul_flops_counted"]
    return {"flops_official_over_polyalign": official / p["matmul_flops_counted"],
            "flops_official_over_exact_floor": official / p["exact_floor_flops"],
            "flops_official_over_exact_floor_shared_prompt": official / p["exact_floor_flops_shared_prompt"],
            "rss_floor_ratio_vs_official": p["rss_floor_mb"] / o["peak_rss_mb"],
            "rss_floor_no_full_grad_ratio_vs_official": p["rss_floor_no_full_grad_mb"] / o["peak_rss_mb"]}


def summarize(bench: str, runs: dict[str, dict[str, Any]], dtype: str) -> dict[str, Any]:
    """Ratios and checks of one bench at one dtype."""
    med = {impl: r["median_s"] for impl, r in runs.items()}
    if bench == "dpo":
        p, t, tp = runs["polyalign"], runs["trl"], runs["trl_precompute"]
        ok, worst = _losses_close(p["losses"], t["losses"], dtype)
        return {"speedup_vs_trl": p["tokens_per_s"] / t["tokens_per_s"],
                "speedup_vs_trl_best": t["min_s"] / p["min_s"],
                "speedup_vs_trl_precompute_best": tp["min_s"] / p["min_s"],
                "speedup_vs_trl_precompute": p["tokens_per_s"] / tp["tokens_per_s"],
                "rss_ratio_vs_trl": p["peak_rss_mb"] / t["peak_rss_mb"],
                "rss_ratio_vs_trl_precompute": p["peak_rss_mb"] / tp["peak_rss_mb"],
                "same_batch": all(r["same_batch_as_polyalign_collator"] for r in runs.values()),
                "loss_equal_to_trl": ok, "loss_max_rel_diff": worst}
    if bench == "mpo":
        p, o = runs["polyalign"], runs["official"]
        ok, worst = _losses_close(p["losses"], o["losses"], dtype)
        return {"speedup_vs_official": o["median_s"] / p["median_s"],
                "speedup_vs_official_best": o["min_s"] / p["min_s"],
                "rss_ratio_vs_official": p["peak_rss_mb"] / o["peak_rss_mb"],
                "loss_equal": ok, "loss_max_rel_diff": worst, **_mpo_flop_ratios(p, o)}
    if bench == "mlc":
        overhead = med["dpo_mlc"] / med["dpo"] - 1.0
        best = runs["dpo_mlc"]["min_s"] / runs["dpo"]["min_s"] - 1.0
        return {"overhead_every_step": overhead, "overhead_every_2nd_step": overhead / 2.0,
                "overhead_every_step_best": best, "overhead_every_2nd_step_best": best / 2.0}
    if bench == "mfu":
        r = runs["polyalign"]
        return {"mfu_issue": r["mfu_issue"], "mfu_executed": r["mfu_executed"],
                "mfu_issue_best": r["model_flops_issue"] / r["min_s"] / r["matmul_peak_flops"],
                "mfu_executed_best": r["model_flops_executed"] / r["min_s"] / r["matmul_peak_flops"],
                "matmul_peak_gflops": r["matmul_peak_flops"] / 1e9}
    if bench == "generation":
        h, n = runs["harness"], runs["naive"]
        return {"speedup_vs_naive": h["tokens_per_s"] / n["tokens_per_s"],
                "speedup_vs_naive_best": n["min_s"] / h["min_s"] * h["generated_tokens"] / n["generated_tokens"],
                "same_outputs": h["outputs_sha"] == n["outputs_sha"]}
    raise ValueError(bench)


def target_status(summaries: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each target, per dtype: value, threshold, met."""
    out: dict[str, dict[str, Any]] = {}
    for dtype in sorted({d for per in summaries.values() for d in per}):
        get = lambda bench, key: summaries.get(bench, {}).get(dtype, {}).get(key)  # noqa: E731
        values = {"dpo_speedup_vs_trl": ("dpo", "speedup_vs_trl", "speedup_vs_trl_best"),
                  "mpo_speedup_vs_official": ("mpo", "speedup_vs_official", "speedup_vs_official_best"),
                  "mpo_rss_ratio_vs_official": ("mpo", "rss_ratio_vs_official", "rss_ratio_vs_official"),
                  "mfu": ("mfu", "mfu_issue", "mfu_issue_best"),
                  "generation_speedup_vs_naive": ("generation", "speedup_vs_naive", "speedup_vs_naive_best")}
        for name, (bench, key, best_key) in values.items():
            value, best = get(bench, key), get(bench, best_key)
            if value is None:
                continue
            threshold = TARGETS[name]
            check = (lambda v: v <= threshold) if name == "mpo_rss_ratio_vs_official" else (lambda v: v >= threshold)
            out.setdefault(dtype, {})[name] = {"value": value, "best_of": best, "target": threshold,
                                               "met": bool(check(value)), "met_best_of": bool(check(best))}
    return out


def _num(r: dict[str, Any], key: str, fmt: str) -> str:
    return format(r[key], fmt) if key in r else "-"


def _fmt_time(r: dict[str, Any]) -> str:
    return f"{r['median_s']:.3f} [{r['min_s']:.3f}-{r['max_s']:.3f}]"


def code_line(git: dict[str, Any] | None) -> str:
    """Which code the numbers come from (``git``: :func:`polyalign.provenance.git_state` at the run's start)."""
    if not git or not git.get("commit"):
        return "Code: not recorded (run outside a git checkout, or by a writer older than this line)."
    state = {True: "with uncommitted changes to tracked files", False: "clean"}.get(git.get("dirty"),
                                                                                  "dirty state not recorded")
    note = f" ({git['note']})" if git.get("note") else ""
    return f"Code: commit `{git['commit']}`, {state}{note}."


def write_markdown(path: Path, size: str, all_runs: dict[str, dict[str, dict[str, dict[str, Any]]]],
                   summaries: dict[str, Any], targets: dict[str, Any], machine: dict[str, Any], command: str,
                   elapsed: float, notes: str, git: dict[str, Any] | None = None) -> None:
    """The report: code and machine, tables per bench, targets, profiles; ``notes`` (hand-written) appended."""
    lines = [f"# polyalign benchmarks ({size} size)", "",
             f"Generated by `{command}` in {elapsed / 60:.1f} min (first configuration measured at "
             f"{machine['time_utc']}).", "", code_line(git), "",
             "## Machine", "",
             f"- CPU: {machine['cpu']}, {machine['cores']} cores",
             f"- torch {machine['torch']}, transformers {machine['transformers']}, TRL {machine['trl']}, "
             f"Python {machine['python']}; torch threads: {machine['threads']}",
             "- load average (1/5/15 min) when each configuration started: see `loadavg_start` in the JSON; "
             f"range over the run: {summaries['_loadavg_range']}", ""]
    for bench, per_dtype in all_runs.items():
        lines += [f"## {bench}", "", "| dtype | impl | step/call median [min-max] s | tokens/s | peak RSS MB (steps) "
                  "| peak RSS MB (incl. setup) | load avg at start |", "|---|---|---|---|---|---|---|"]
        for dtype, runs in per_dtype.items():
            for impl, r in runs.items():
                lines.append(f"| {dtype} | {impl} | {_fmt_time(r)} | {_num(r, 'tokens_per_s', '.1f')} | "
                             f"{_num(r, 'peak_rss_mb', '.0f')} | {_num(r, 'peak_rss_incl_setup_mb', '.0f')} | "
                             f"{r['loadavg_start'][0]:.2f} |")
        lines.append("")
        for dtype, s in summaries.get(bench, {}).items():
            lines.append(f"- {dtype}: " + ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                                                    for k, v in s.items()))
        lines.append("")
    lines += ["## Targets", "", "`value`: from the medians; `best-of`: from the fastest repeat of each side (less "
              "exposed to the other jobs on this shared machine).", "",
              "| dtype | target | value (median) | value (best-of) | threshold | met (median) | met (best-of) |",
              "|---|---|---|---|---|---|---|"]
    for dtype, per in targets.items():
        for name, t in per.items():
            op = "<=" if name == "mpo_rss_ratio_vs_official" else ">="
            lines.append(f"| {dtype} | {name} | {t['value']:.3f} | {t['best_of']:.3f} | {op} {t['target']} | "
                         f"{'yes' if t['met'] else 'NO'} | {'yes' if t['met_best_of'] else 'NO'} |")
    lines += ["", "## Profiles (torch.profiler, one extra step, CPU time)", ""]
    for bench, per_dtype in all_runs.items():
        for dtype, runs in per_dtype.items():
            for impl, r in runs.items():
                if r.get("profile"):
                    lines += [f"### {bench} / {impl} / {dtype}", "", "```", r["profile"].rstrip(), "```", ""]
    if notes:
        lines += [notes.rstrip(), ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def rebuild_markdown(out_dir: Path, md: Path, notes_path: Path | None) -> int:
    """Rewrite the report from ``<out-dir>/summary.json`` and the per-bench JSON files."""
    summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    all_runs = {b: json.loads((out_dir / f"{b}.json").read_text(encoding="utf-8"))["runs"]
                for b in BENCHES if (out_dir / f"{b}.json").is_file()}
    command = f"python benchmarks/run_all.py --size {summary['size']} --dtypes {','.join(summary['dtypes'])}"
    notes = notes_path.read_text(encoding="utf-8") if notes_path and notes_path.is_file() else ""
    write_markdown(md, summary["size"], all_runs, summary["summaries"], summary["targets"], summary["machine"],
                   command, summary["elapsed_s"], notes, summary.get("git"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=list(common.SIZES), default="quick")
    parser.add_argument("--dtypes", default=None, help="comma list of fp32,bf16 (default: fp32 for quick, both for report)")
    parser.add_argument("--benches", default=",".join(BENCHES), help=f"comma list of {list(BENCHES)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default=None, help="default: benchmarks/results (report), benchmarks/results/quick")
    parser.add_argument("--md", default=None, help="default: benchmarks/RESULTS.md (report), <out-dir>/RESULTS.md")
    parser.add_argument("--notes", default=None, help="Markdown file appended to the report (what was tried, ...)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--rebuild-md", action="store_true",
                        help="only rewrite the Markdown report from the JSON already in --out-dir (e.g. after editing notes)")
    args = parser.parse_args(argv)
    here = Path(__file__).resolve().parent
    out_dir = Path(args.out_dir) if args.out_dir else (here / "results" if args.size == "report" else here / "results" / "quick")
    md = Path(args.md) if args.md else (here / "RESULTS.md" if args.size == "report" else out_dir / "RESULTS.md")
    notes_path = Path(args.notes) if args.notes else (here / "NOTES.md" if args.size == "report" else None)
    dtypes = (args.dtypes or ("fp32,bf16" if args.size == "report" else "fp32")).split(",")
    benches = [b for b in args.benches.split(",") if b]
    if args.rebuild_md:
        return rebuild_markdown(out_dir, md, notes_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    git = git_state()  # before measuring: the code the numbers come from
    start = time.perf_counter()
    all_runs: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    summaries: dict[str, Any] = {}
    loads = []
    # dtype outermost: a time-boxed run that is stopped still has complete fp32 results.
    for dtype in dtypes:
        for bench in benches:
            module, impls = BENCHES[bench]
            runs = {}
            for impl in impls:
                load = list(os.getloadavg())
                loads.append(load[0])
                profile = (bench, impl) in PROFILED and not args.no_profile
                print(f"[{time.perf_counter() - start:6.0f}s] {bench} {impl} {dtype} (load {load[0]:.2f})", flush=True)
                result = common.run_child(module, impl, args.size, dtype, args.threads, profile=profile)
                result["loadavg_start"] = load
                runs[impl] = result
            all_runs.setdefault(bench, {})[dtype] = runs
            summaries.setdefault(bench, {})[dtype] = summarize(bench, runs, dtype)
            payload = {"size": args.size, "runs": all_runs[bench], "summary": summaries[bench]}
            (out_dir / f"{bench}.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    elapsed = time.perf_counter() - start
    summaries["_loadavg_range"] = f"{min(loads):.2f}-{max(loads):.2f}" if loads else "n/a"
    targets = target_status({k: v for k, v in summaries.items() if not k.startswith("_")})
    machine = next(r["machine"] for per in all_runs.values() for runs in per.values() for r in runs.values())
    summary = {"size": args.size, "dtypes": dtypes, "elapsed_s": elapsed, "machine": machine, "git": git,
               "summaries": summaries, "targets": targets}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    command = f"python benchmarks/run_all.py --size {args.size}" + (f" --dtypes {args.dtypes}" if args.dtypes else "")
    notes = notes_path.read_text(encoding="utf-8") if notes_path and notes_path.is_file() else ""
    write_markdown(md, args.size, all_runs, summaries, targets, machine, command, elapsed, notes, git)
    print(json.dumps({"targets": targets, "summaries": summaries}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

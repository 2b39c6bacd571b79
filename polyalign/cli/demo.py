"""``polyalign demo``: the whole pipeline offline on the synthetic world (see :mod:`polyalign.toyworld.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from polyalign.errors import UserError


def _seeds(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="offline demo: synthetic world, base model, DPO / MPO / DPO+MLC, evaluation, report",
        description="Build the synthetic multilingual world, pretrain (or reuse) its tiny base model, align it with "
        "English-only DPO, MPO and DPO+MLC under the same budget, evaluate every language on held-out prompts, run "
        "the reward-gap and retrieval analyses and write OUT/report.html, OUT/summary.json and "
        "OUT/results_table.md. Each seed in its own fresh process (one per core at a time) with pinned numerics: one "
        "thread, ATen's AVX2 kernels, MKL's AUTO branch (--quick: COMPATIBLE); summary.json records them, the git "
        "commit and every model's weight hash.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--seeds", type=_seeds, default=None, help="comma-separated seeds (default 0,1,2,3; --quick: 0)")
    p.add_argument("--quick", action="store_true", help="reduced world, model and budget (about a minute)")
    p.add_argument("--cache-dir", default=None, help="where pretrained base models are cached (default OUT/cache)")
    p.add_argument("--jobs", type=int, default=None, help="parallel seed processes (default: number of cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from polyalign.toyworld.demo import run_demo, terminal_table

    if args.jobs is not None and args.jobs < 1:
        raise UserError("must be >= 1", field="jobs")
    summary = run_demo(Path(args.out), seeds=args.seeds, quick=args.quick, cache_dir=args.cache_dir,
                       jobs=args.jobs, progress=not args.no_progress)
    print()
    print(terminal_table(summary["metrics"]))
    timing = summary["timing"]
    print(f"wall {timing['wall_s']:.0f} s, CPU {timing['cpu_s']:.0f} s; report: {summary['report']}")
    print(f"tables: {Path(args.out) / 'results_table.md'}; into the README (full config, clean commit): "
          f"python -m polyalign.toyworld.readme_tables --from-run {args.out}")
    return 0

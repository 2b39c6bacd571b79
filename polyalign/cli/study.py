"""``polyalign study``: the papers' experiment on a real model (train, evaluate, probe, table), resumable.

Runs the recipe's methods (base, English DPO, MPO, DPO+MLC, target DPO) over its seeds,
evaluates each on MultiJail in 10 languages, probes the analysis model, and writes
``study.md`` / ``study.json`` into ``--out``. A killed study rerun with the same arguments
continues where it stopped. ``--publish`` stores the finished study's summary in
``results/study/summary.json`` and rewrites the README's study block from it.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

DEFAULT_RECIPE = "recipes/study/smollm2_multijail.yaml"


# OpenMP threads that wait by sleeping, not spinning: on a shared machine (load above the
# core count) spinning threads burn CPU while their peers are descheduled; measured on this
# project's 2-core machine at load ~9: greedy generation 73 s wall / 29 CPU-s (spinning) vs
# 7 s / 2.7 CPU-s (passive), forward+backward 63 s / 22 CPU-s vs 12-17 s / 6 CPU-s. Only idle
# threads change, not the work: the quick study's base evaluation gave the same 40 generations
# and reward gaps as the earlier run without it. Read by libgomp when torch loads, so it is set
# before anything imports torch; a value the user exported wins.
WAIT_POLICY = "PASSIVE"


def _study(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    # Imported here, after the variable is set: these modules import torch (see WAIT_POLICY).
    from polyalign.study.readme import publish
    from polyalign.study.recipe import load_recipe
    from polyalign.study.runner import run_study

    # polyalign's own progress lines (training steps, data counts); other libraries stay at warnings.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("polyalign").setLevel(logging.INFO)
    out = Path(args.out or ("runs/study-quick" if args.quick else "runs/study"))
    if args.table_only:
        from polyalign.study.runner import write_table

        write_table(load_recipe(args.recipe, quick=args.quick), out)
        print(out / "study.md")
    elif not args.publish_only:
        recipe = load_recipe(args.recipe, quick=args.quick)
        run_study(recipe, out)
        print(out / "study.md")
    if args.publish or args.publish_only:
        changed = publish(out)
        print(f"README study block {'rewritten' if changed else 'already up to date'}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("study", help="the papers' experiment on a real model, in one resumable command",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help=f"study recipe (default: {DEFAULT_RECIPE})")
    parser.add_argument("--quick", action="store_true", help="the recipe's quick: variant (smaller, one seed)")
    parser.add_argument("--out", help="output folder (default: runs/study or runs/study-quick); rerun to resume")
    parser.add_argument("--publish", action="store_true",
                        help="after the run: store its summary in results/study/ and rewrite the README block")
    parser.add_argument("--table-only", action="store_true",
                        help="rebuild study.md/study.json from the stages finished so far (a partial study), "
                             "run nothing")
    parser.add_argument("--publish-only", action="store_true", help="publish --out's finished study without running")
    parser.set_defaults(func=_study)

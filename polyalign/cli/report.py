"""``polyalign report``: per-language tables and figures for evaluation runs (HTML + Markdown)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",")]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report", help="per-language tables and plots for one or more eval runs",
        description="Read eval run folders (results.json, optionally reward_gap.json and retrieval.json) and write "
        "OUT_DIR/report.html (self-contained) and OUT_DIR/report.md with PNG figures beside it. The first run is "
        "the baseline of the delta tables.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="eval output folder(s) holding results.json")
    p.add_argument("-o", "--out", required=True, metavar="OUT_DIR", help="folder for report.html, report.md and PNGs")
    p.add_argument("--names", type=_csv_list, help="comma-separated run names, one per RUN_DIR (default: folder names)")
    p.add_argument("--title", help="report title")
    p.add_argument("--dominant", default="en",
                   help="dominant language to highlight and check (default en; 'none' for none)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from polyalign.report import build_report

    dominant = None if str(args.dominant).lower() == "none" else args.dominant
    html_path = build_report([Path(p) for p in args.run_dirs], Path(args.out), names=args.names, title=args.title,
                             dominant=dominant)
    print(f"wrote {html_path} and {html_path.with_name('report.md')}")
    return 0

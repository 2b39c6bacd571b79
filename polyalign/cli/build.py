"""``polyalign data build --config BUILD.yaml``: build multilingual alignment data.

Registered under ``polyalign data`` by :func:`register_build` (called from
``polyalign/cli/data.py``). Prints what each run translated / generated / judged anew and
what it reused, and where the outputs and the data card went. Exit 0 on success, 2 on a
user error (one line, from the CLI entry point).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from polyalign.cli import ArgumentParser
from polyalign.errors import UserError


def _build(args: argparse.Namespace) -> int:
    # Lazy: the build pipeline imports torch and transformers; every other subcommand starts without them.
    from polyalign.data.build.config import load_build_config
    from polyalign.data.build.pipeline import run_build

    overrides: dict = {}
    if args.limit is not None:
        overrides["input"] = {"limit": args.limit}
    if args.out is not None:
        overrides["output"] = {"dir": str(Path(args.out).resolve())}
    config = load_build_config(args.config, overrides)
    card = run_build(config)
    if args.json:
        print(json.dumps({"outputs": card["outputs"], "run": card["runs"][-1]}, ensure_ascii=False, indent=2))
    else:
        for output in card["outputs"]:
            langs = ", ".join(f"{k}: {v}" for k, v in output["per_language"].items())
            print(f"wrote {output['records']} records to {output['path']} ({langs})")
        print(f"data card: {config.out_dir / 'data_card.json'}")
    return 0


def register_build(data_subparsers: argparse._SubParsersAction) -> None:
    """Add ``build`` to the ``polyalign data`` subcommands."""
    parser = data_subparsers.add_parser(
        "build", help="translate / self-generate / judge / filter English pairs into MPO, MLC or DPO data",
        description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the build YAML (see recipes/build/)")
    parser.add_argument("--limit", type=int, help="override input.limit (number of source pairs)")
    parser.add_argument("--out", help="override output.dir (relative to the current folder)")
    parser.add_argument("--json", action="store_true", help="print the outputs and this run's counts as JSON")
    parser.set_defaults(func=_build)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m polyalign.cli.build --config BUILD.yaml`` (same as ``polyalign data build``)."""
    parser = ArgumentParser(prog="polyalign data")
    register_build(parser.add_subparsers(dest="data_command", parser_class=ArgumentParser))
    args = parser.parse_args(["build", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except UserError as exc:
        print(f"polyalign: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

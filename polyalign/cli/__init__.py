"""``polyalign`` command line: one entry point; each subcommand calls library functions.

Each subcommand lives in its own module exposing ``register(subparsers)``; the module sets
``func`` on its parser. A :class:`~polyalign.errors.UserError` anywhere becomes one line on
stderr and exit code 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from polyalign.errors import UserError

# Subcommand modules, in the order they appear in ``--help``. A module missing here is a
# feature not built yet, not an error.
SUBCOMMAND_MODULES = (
    "polyalign.cli.data",
    "polyalign.cli.train",
    "polyalign.cli.eval",
    "polyalign.cli.analyze",
    "polyalign.cli.report",
    "polyalign.cli.demo",
    "polyalign.cli.models",
    "polyalign.cli.study",
)


class ArgumentParser(argparse.ArgumentParser):
    """argparse exits with 2 on usage errors already; keep its message on one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="polyalign", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--allow-download", action="store_true",
                        help="let --model hub ids download from the Hugging Face hub (default: local folders, "
                        "known model names and already-cached ids only; same as POLYALIGN_ALLOW_DOWNLOAD=1)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def _version() -> str:
    from polyalign import __version__

    return f"polyalign {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.allow_download:  # read by polyalign.models.load_model_and_tokenizer, wherever a command loads
        os.environ["POLYALIGN_ALLOW_DOWNLOAD"] = "1"
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except UserError as exc:
        print(f"polyalign: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("polyalign: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

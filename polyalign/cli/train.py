"""``polyalign train --config RECIPE.yaml [--key value ...]``: run a training recipe.

Every setting of :class:`polyalign.training.config.PolyalignConfig` (all of
``transformers.TrainingArguments`` plus polyalign's) can be set in the recipe or overridden
on the command line (``--learning_rate 1e-6``, ``--max_steps=10``). An unknown key is an
error naming the file, line and key (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any


def _train(args: argparse.Namespace) -> int:
    from polyalign.training.config import load_config
    from polyalign.training.run import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = load_config(args.config, list(args.overrides))
    info = train(config)
    summary = {"saved_to": info["saved_to"], "reference_cache": info["reference_cache"],
               "train_loss": info["metrics"].get("train_loss"),
               "skipped": {name: {**data["read_skipped"], **data["tokenize"]["skipped"]}
                           for name, data in info["data"].items()}}
    print(json.dumps(summary, default=str))
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model (dpo, simpo, orpo, sft, mpo) from a YAML recipe",
        description="Train from a YAML recipe; any setting can be overridden with --key value.",
    )
    parser.add_argument("--config", required=True, help="YAML recipe (see recipes/)")
    parser.set_defaults(func=_train, overrides=[])

    base = type(parser)

    class _TrainParser(base):  # type: ignore[misc, valid-type]
        """Collect unknown ``--key value`` pairs as setting overrides instead of failing."""

        def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
            namespace, extras = base.parse_known_args(self, args if args is not None else sys.argv[1:], namespace)
            namespace.overrides = list(getattr(namespace, "overrides", []) or []) + list(extras)
            return namespace, []

    parser.__class__ = _TrainParser

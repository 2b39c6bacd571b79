"""The study recipe (``recipes/study/*.yaml``): read, checked key by key, ``--quick`` merged in.

Every number lives in the recipe with its reason beside it; this module only checks that
each key is known and of the right type, so a typo is a one-line error naming the file,
line and key, never a silently ignored setting.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from polyalign.errors import UserError
from polyalign.io import read_yaml_document

METHODS = ("base", "dpo_en", "mpo", "dpo_mlc", "dpo_target")
# Methods that start from the English-DPO model of the same seed (their reference model).
NEEDS_DPO_EN = ("mpo", "dpo_target")

# Schema: section -> key -> accepted types. "train" is passed to polyalign train (checked there).
_NUM = (int, float)
SCHEMA: dict[str, Any] = {
    "model": str, "analysis_model": (str, type(None)), "seeds": list, "methods": list, "threads": int,
    "budget_minutes": _NUM,
    "data": {"mpo_file": str, "multijail": str, "detox_parallel": (str, type(None)), "target_languages": list,
             "target_pairs_per_language": int, "reward_gap_pairs_per_language": int, "sample_seed": int},
    "train": dict,
    "eval": {"prompts_per_language": int, "sample_seed": int, "max_new_tokens": int, "batch_size": int, "judge": str},
    "degenerate": {"ngram": int, "max_distinct": _NUM, "min_tokens": int},
    "analysis": {"sentences_per_language": int, "multijail_prompts": int, "max_length": int, "batch_size": int},
    "quick": dict,
}
REQUIRED = ("model", "seeds", "methods", "data", "train", "eval", "degenerate")


@dataclass
class StudyRecipe:
    """A checked recipe: ``values`` (quick already merged when asked) and where it came from."""

    path: str
    values: dict[str, Any]
    quick: bool

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def digest(self, *keys: str) -> str:
        """A short hash of the named sections: a stage's identity (rerun only when they change)."""
        blob = json.dumps({k: self.values.get(k) for k in keys}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _lines(node: Any, prefix: str = "") -> dict[str, int]:
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = f"{prefix}{key.value}"
            out[name] = key.start_mark.line + 1
            out.update(_lines(value, name + "."))
    return out


def _check(values: dict[str, Any], schema: dict[str, Any], path: str, lines: dict[str, int], prefix: str = "") -> None:
    for key, value in values.items():
        name = f"{prefix}{key}"
        where = {"file": path, "line": lines.get(name), "field": name}
        if key not in schema:
            raise UserError(f"unknown study setting (known: {', '.join(schema)})", **where)
        kind = schema[key]
        if isinstance(kind, dict):
            if not isinstance(value, dict):
                raise UserError(f"expected a mapping, got {type(value).__name__}", **where)
            _check(value, kind, path, lines, name + ".")
        elif isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise UserError(f"expected {kind}, got a boolean", **where)
        elif not isinstance(value, kind):
            raise UserError(f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}", **where)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_recipe(path: str | Path, *, quick: bool = False, overrides: dict[str, Any] | None = None) -> StudyRecipe:
    """Read and check ``path``; ``quick`` merges its ``quick:`` section; ``overrides`` (tests) last."""
    values, node = read_yaml_document(path)
    if not isinstance(values, dict):
        raise UserError("a study recipe must be a mapping", file=path, line=1)
    lines = _lines(node)
    _check(values, SCHEMA, str(path), lines)
    quick_section = values.pop("quick", None) or {}
    _check(quick_section, {k: v for k, v in SCHEMA.items() if k != "quick"}, str(path), lines, "quick.")
    for key in REQUIRED:
        if key not in values:
            raise UserError("missing required study setting", file=path, field=key)
    if quick:
        values = _merge(values, quick_section)
    if overrides:
        values = _merge(values, overrides)
    _check_values(values, str(path), lines)
    return StudyRecipe(path=str(path), values=values, quick=quick)


def _check_values(values: dict[str, Any], path: str, lines: dict[str, int]) -> None:
    def fail(name: str, message: str) -> UserError:
        return UserError(message, file=path, line=lines.get(name), field=name)

    unknown = [m for m in values["methods"] if m not in METHODS]
    if unknown or not values["methods"]:
        raise fail("methods", f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if any(m in values["methods"] for m in NEEDS_DPO_EN) and "dpo_en" not in values["methods"]:
        raise fail("methods", "mpo and dpo_target start from dpo_en: list dpo_en too")
    seeds = values["seeds"]
    if (not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise fail("seeds", f"expected distinct integers, got {seeds!r}")
    for name in ("data.target_pairs_per_language", "data.reward_gap_pairs_per_language", "eval.prompts_per_language",
                 "eval.max_new_tokens", "eval.batch_size", "degenerate.ngram", "threads", "budget_minutes"):
        section, _, key = name.rpartition(".")
        value = values[section][key] if section else values.get(key, 1)
        if value < 1:
            raise fail(name, f"must be >= 1, got {value}")
    if not 0 < values["degenerate"]["max_distinct"] <= 1:
        raise fail("degenerate.max_distinct", "must be in (0, 1]")
    for key in ("model", "methods", "mlc_languages", "output_dir", "train_file", "seed", "model_name_or_path"):
        if key in values["train"]:
            raise fail(f"train.{key}", "set by the study itself, not in train:")

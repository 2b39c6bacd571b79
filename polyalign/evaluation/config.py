"""``EvalConfig``: every setting of an eval run, from Python, a YAML file or ``polyalign eval`` flags.

Three ways to the same object:

- Python: ``EvalConfig(benchmark="multijail", data="../shared/data", languages=["en", "sw"], limit=10,
  out_dir="runs/eval")``, then ``evaluate(config, model=model, tokenizer=tok)`` (an in-memory model) or
  ``evaluate(config)`` with ``model="path/to/model"`` in the config;
- YAML: ``load_eval_config("eval.yaml")``, a mapping of field -> value (the field names below);
- command line: ``polyalign eval --config eval.yaml --limit 5``; a flag given on the command line
  replaces the file's value (``load_eval_config(path, overrides)``), a flag not given leaves it.

An unknown key or a value of the wrong type is a :class:`~polyalign.errors.UserError` naming the
file, its line and the field. :meth:`EvalConfig.to_yaml` writes a file that loads back to an
equal config.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from polyalign.errors import UserError
from polyalign.evaluation.suites import parse_suites
from polyalign.io import read_yaml_document

DEFAULT_MAX_JUDGE_ERROR_SHARE = 0.05
DEFAULT_JUDGE_BATCH_SIZE = 32
BACKENDS = ("hf", "vllm")


def _f(default: Any, help: str, yaml_type: str = "str") -> Any:
    """A field with its documentation and the type its YAML value must have."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, "yaml": yaml_type})
    return field(default=default, metadata={"help": help, "yaml": yaml_type})


@dataclass
class EvalConfig:
    """The settings of :func:`polyalign.evaluation.run.evaluate` (``polyalign eval``); see the module docstring."""

    # What to evaluate.
    model: str | None = _f(None, "model folder or cached hub id (or pass an in-memory model to evaluate(model=...))")
    adapter: str | None = _f(None, "PEFT adapter folder applied on top of the model")
    benchmark: Any = _f(None, "benchmark name, alias or benchmark .yaml spec (a BenchmarkSpec in Python)")
    out_dir: str | None = _f(None, "output folder; rerun with the same folder to resume")
    suites: tuple[str, ...] = _f(("safety",), "safety, utility or both (a list or 'safety,utility')", "suites")
    # Which prompts.
    data: str | None = _f(None, "data root holding the benchmark's default path, or the data file; "
                                "default $POLYALIGN_DATA")
    languages: tuple[str, ...] | None = _f(None, "language codes to keep (default: all in the data)", "list")
    categories: tuple[str, ...] | None = _f(None, "categories to keep", "list")
    limit: int | None = _f(None, "at most N prompts per language (seeded sample)", "int")
    seed: int = _f(0, "sampling seed for limit and for generation", "int")
    column_map: dict[str, str] | None = _f(None, "field -> column of a custom data file, e.g. {text: goal}", "map")
    language: str | None = _f(None, "language of a single-language custom file")
    attack: str | None = _f(None, "evaluate attacked prompts: code-switch[...], jailbreak[...] or translate:LANG[...]")
    # Judging.
    judge: str | None = _f(None, "judge (safety) or scorer (toxicity); several safety judges comma-separated; "
                                 "default: the benchmark's")
    judge_options: dict[str, Any] = _f({}, "judge options; with several judges JUDGE.key goes to that judge", "map")
    judge_batch_size: int = _f(DEFAULT_JUDGE_BATCH_SIZE, "items per judge call", "int")
    max_judge_error_share: float = _f(DEFAULT_MAX_JUDGE_ERROR_SHARE, "fail (after writing the results) when more "
                                      "than this share of a language's items could not be judged", "float")
    scorer_model: str | None = _f(None, "language model for conditional perplexity (toxicity benchmarks)")
    # Generation (None: the benchmark's protocol default).
    max_new_tokens: int | None = _f(None, "new tokens per response", "int")
    num_samples: int | None = _f(None, "samples per prompt (needs temperature > 0)", "int")
    temperature: float | None = _f(None, "0 = greedy", "float")
    top_p: float | None = _f(None, "nucleus sampling mass", "float")
    chat_template: bool | None = _f(None, "render prompts with the chat template (false: continue the raw text)",
                                    "bool")
    system_prompt: str | None = _f(None, "system prompt for the chat template")
    batch_size: int | None = _f(None, "generation batch size (does not change outputs; default 32 hf, 256 vllm)", "int")
    backend: str = _f("hf", "hf or vllm")
    dtype: Any = _f(None, "float32, bfloat16, float16 or auto (a torch.dtype in Python)")
    device: Any = _f(None, "e.g. cpu, cuda, cuda:1")
    trust_remote_code: bool = _f(False, "allow model code from the model folder (the evaluated model only)", "bool")
    batch_delay: float = _f(0.0, "sleep this many seconds after each generation batch (throttling)", "float")
    progress: bool = _f(True, "progress bars on stderr", "bool")
    # Utility suite.
    utility_tasks: tuple[Any, ...] = _f((), "utility tasks: names, task YAMLs or JSONL/CSV files", "list")
    lm_eval_tasks: tuple[str, ...] = _f((), "lm-evaluation-harness task names", "list")
    lm_eval_include: str | None = _f(None, "folder of extra lm-eval task YAMLs")
    utility_limit: int | None = _f(None, "at most N utility items (and benign prompts) per language", "int")
    benign_benchmark: str | None = _f(None, "benign prompts for over-refusal: a benchmark name / spec, or JSONL/CSV")
    benign_judge: str | None = _f(None, "judge of refusals on the benign prompts (default: the safety judge, "
                                        "else refusal)")

    def __post_init__(self) -> None:
        # Paths become text and sequences tuples, so a config compares equal however it was built.
        for name in ("model", "adapter", "out_dir", "data", "scorer_model", "lm_eval_include", "benign_benchmark"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))
        try:
            self.suites = parse_suites(self.suites)
        except UserError as exc:
            raise UserError(exc.message, field="suites") from None
        for name in ("languages", "categories"):
            value = getattr(self, name)
            setattr(self, name, _tuple(value) or None)
        self.lm_eval_tasks = _tuple(self.lm_eval_tasks)
        self.utility_tasks = tuple(os.fspath(t) if isinstance(t, os.PathLike) else t for t in self.utility_tasks or ())
        self.judge_options = dict(self.judge_options or {})
        self.column_map = dict(self.column_map) if self.column_map else None
        if self.column_map and not all(isinstance(k, str) and isinstance(v, str) for k, v in self.column_map.items()):
            raise UserError("column_map must map field names to column names (text)", field="column_map")
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend {self.backend!r}; use hf or vllm", field="backend")
        if not 0.0 <= self.max_judge_error_share <= 1.0:
            raise UserError(f"max_judge_error_share must be in [0, 1], got {self.max_judge_error_share}",
                            field="max_judge_error_share")
        for name in ("limit", "utility_limit", "max_new_tokens", "num_samples", "batch_size", "judge_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"must be at least 1, got {value}", field=name)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain YAML/JSON values (tuples as lists); a Python-only value is a :class:`UserError`."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            value = list(value) if isinstance(value, tuple) else value
            bad = _not_plain(value)
            if bad is not None:
                raise UserError(f"a {type(bad).__name__} cannot be written to a config file; give a name or path",
                                field=f.name)
            out[f.name] = value
        return out

    def to_yaml(self) -> str:
        """The config as YAML that :func:`load_eval_config` reads back to an equal config."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def _tuple(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # "en,sw" as on the command line
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


def _not_plain(value: Any) -> Any:
    """The first value inside ``value`` that YAML cannot hold as plain data (a Python object), else None."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return None
    if isinstance(value, (list, dict)):
        items = value if isinstance(value, list) else [*value, *value.values()]
        return next((bad for v in items if (bad := _not_plain(v)) is not None), None)
    return value


def config_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(EvalConfig)}


_NULLS = ("", "null", "Null", "NULL", "~")


def _typed(name: str, value: Any, node: yaml.Node | None) -> Any:
    """A YAML value checked against its field's type; text fields keep the text as written
    (``language: no`` is Norwegian, not YAML 1.1's False). Raises ``ValueError(message)``."""
    expected = config_fields()[name].metadata["yaml"]
    plain = isinstance(node, yaml.ScalarNode) and node.style is None
    if value is None or (plain and node.value in _NULLS and expected != "str"):
        return None
    if expected == "str":
        if plain:
            return None if node.value in _NULLS[1:] else node.value
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected text, got {type(value).__name__}")
    if expected == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    if expected == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"expected a whole number, got {value!r}")
    if expected == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"expected a number, got {value!r}")
    if expected in ("list", "suites"):
        if isinstance(node, yaml.SequenceNode) and all(isinstance(n, yaml.ScalarNode) for n in node.value):
            return [n.value for n in node.value]  # as written: [no, sv] are language codes
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a list or comma-separated text, got {type(value).__name__}")
    if not isinstance(value, dict):  # map
        raise ValueError(f"expected a mapping, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def read_eval_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """``(settings, line of each key)`` of an eval config file; unknown keys and bad types are UserErrors."""
    data, node = read_yaml_document(path)
    if data is None:
        return {}, {}
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise UserError("an eval config must be a mapping of setting: value", file=path, line=1)
    known = config_fields()
    settings: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for key_node, value_node in node.value:
        key, line = str(key_node.value), key_node.start_mark.line + 1
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"unknown setting{hint}", file=path, line=line, field=key)
        try:
            settings[key] = _typed(key, data[key_node.value], value_node)
        except ValueError as exc:
            raise UserError(str(exc), file=path, line=line, field=key) from None
        lines[key] = line
    return settings, lines


def load_eval_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None, *,
                     flags: Mapping[str, str] | None = None) -> EvalConfig:
    """The config file ``path`` (may be None) with ``overrides`` (field -> value) on top.

    An error in a file value names the file, line and field; one in an override names
    ``<command line>`` and the field's flag (``flags``: field -> flag name, e.g. ``--out``).
    """
    settings, lines = read_eval_yaml(path) if path is not None else ({}, {})
    known = config_fields()
    for key in overrides or {}:
        if key not in known:
            raise UserError("unknown setting", file="<command line>", field=key)
    values = {**settings, **(overrides or {})}
    try:
        return EvalConfig(**values)
    except UserError as exc:
        if exc.file is None and exc.field in (overrides or {}):
            raise UserError(exc.message, file="<command line>", field=(flags or {}).get(exc.field, exc.field)) from None
        if exc.file is None and exc.field in settings:
            raise UserError(exc.message, file=path, line=lines.get(exc.field), field=exc.field) from None
        raise
    except (TypeError, ValueError) as exc:  # e.g. a number compared with a bound
        raise UserError(f"invalid settings: {str(exc).splitlines()[0]}", file=path) from None


__all__ = ["EvalConfig", "load_eval_config", "read_eval_yaml"]

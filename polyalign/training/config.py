"""Training configuration: ``transformers.TrainingArguments`` plus polyalign's settings.

A run is described by a YAML recipe (top-level mapping of setting -> value) with optional
command-line overrides ``--key value`` (or ``--key=value``; values parsed as YAML scalars).
Any key that is neither a ``TrainingArguments`` field nor one below is a
:class:`~polyalign.errors.UserError` naming the YAML file, its line and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainingArguments

from polyalign.data.tokenize import TokenizeSettings
from polyalign.errors import UserError
from polyalign.io import read_yaml_document
from polyalign.losses import DPO_LOSS_TYPES, MLC_SCALES, POOLINGS

METHODS = ("dpo", "simpo", "orpo", "sft", "mpo")
# Default weight of the NLL (SFT) term on the chosen answer per method. ORPO is NLL + the
# odds-ratio term by definition; for DPO a weight around 1 is recommended (plain DPO without
# it collapsed in a feasibility run) but 0 keeps the textbook objective.
DEFAULT_NLL_WEIGHT = {"dpo": 0.0, "simpo": 0.0, "orpo": 1.0, "sft": 1.0, "mpo": 0.0}
# The methods that read each method-specific setting (polyalign.training.objective); under any
# other method a value other than the default is refused (it would be ignored). Settings of
# where things go (output_dir, reference_cache_dir, ...) are not method-specific.
METHOD_SETTINGS: dict[str, tuple[str, ...]] = {
    "beta": ("dpo", "simpo", "orpo"),
    "loss_type": ("dpo",),
    "label_smoothing": ("dpo",),
    "simpo_gamma": ("simpo",),
    "nll_weight": ("dpo", "simpo", "orpo", "sft"),
    "mpo_beta": ("mpo",),
    "retain_alpha": ("mpo",),
    "retain_pooling": ("mpo",),
    "dominant_language": ("mpo",),
    "ref_model_name_or_path": ("dpo", "mpo"),
}
# Read only by the MLC term (mlc_weight > 0).
MLC_SETTINGS = ("mlc_tau", "mlc_every", "mlc_layer", "mlc_dim", "mlc_scale", "mlc_languages", "variants_file",
                "variants_format")


@dataclass
class PolyalignConfig(TrainingArguments):
    """All settings of ``polyalign train``. Paper values and sources are in ``recipes/*.yaml``."""

    # What to train.
    method: str = field(default="dpo", metadata={"help": f"one of {METHODS}"})
    model_name_or_path: str | None = field(default=None, metadata={"help": "model folder (safetensors) or hub id"})
    ref_model_name_or_path: str | None = field(
        default=None, metadata={"help": "reference model; default: the starting policy (adapters disabled with LoRA)"}
    )
    model_dtype: str | None = field(default=None, metadata={"help": "float32 | bfloat16 | float16 | auto"})
    # Data.
    train_file: str | None = field(default=None, metadata={"help": "training data (any format read_records knows)"})
    train_format: str | None = None
    eval_file: str | None = field(default=None, metadata={"help": "evaluation data; metrics per language"})
    eval_format: str | None = None
    data_language: str | None = field(default=None, metadata={"help": "declared language where the data has none"})
    detect_language: bool = True
    dominant_language: str = field(default="en", metadata={"help": "MPO dominant language"})
    max_examples: int | None = field(default=None, metadata={"help": "use only the first N records"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "replace a non-empty output_dir of another run (else refused)"})
    # Tokenisation.
    max_length: int = 1024
    max_prompt_length: int | None = None
    truncation_mode: str = "keep_end"
    on_overlong: str = field(default="skip", metadata={"help": "skip (counted, reported) | error"})
    prefix_mismatch: str = field(default="error", metadata={"help": "error | concatenate"})
    chat_template: str = field(default="auto", metadata={"help": "auto | chat | plain"})
    # Objective.
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    nll_weight: float | None = field(default=None, metadata={"help": f"default per method: {DEFAULT_NLL_WEIGHT}"})
    mpo_beta: float = 1.0
    retain_alpha: float = 1.0
    retain_pooling: str = field(default="masked_mean", metadata={"help": "masked_mean | unmasked_mean"})
    logps_chunk_size: int = 1024
    # MLC (multilingual consistency) term, for every method; released values in recipes/dpo_mlc_*.yaml.
    mlc_weight: float = field(default=0.0, metadata={"help": "weight of the MLC term; 0 = off (released 0.8)"})
    mlc_tau: float = field(default=0.2, metadata={"help": "MLC temperature"})
    mlc_every: int = field(default=2, metadata={"help": "add the MLC term on every n-th optimiser step"})
    mlc_layer: int = field(default=-1, metadata={"help": "hidden state read by the extractor (HF index; -1 = last)"})
    mlc_dim: int = field(default=512, metadata={"help": "extractor output dimension"})
    mlc_scale: str = field(default="released", metadata={"help": "released | paper"})
    mlc_languages: Any = field(default=None, metadata={"help": "variant languages (list); default: all present"})
    variants_file: str | None = field(default=None, metadata={"help": "prompt variants joined to the data by id"})
    variants_format: str | None = None
    # Reference cache.
    reference_cache_dir: str | None = field(default=None, metadata={"help": "default: ~/.cache/polyalign/reference"})
    # LoRA / QLoRA.
    use_lora: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: Any = "all-linear"
    load_in_4bit: bool = False
    # TrainingArguments defaults that must differ for this trainer.
    remove_unused_columns: bool = False
    report_to: Any = "none"
    save_strategy: Any = "no"
    logging_steps: float = 10

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; expected one of {list(METHODS)}", field="method")
        if self.retain_pooling not in POOLINGS:
            raise UserError(f"must be one of {list(POOLINGS)}, got {self.retain_pooling!r}", field="retain_pooling")
        if self.loss_type not in DPO_LOSS_TYPES:
            raise UserError(f"must be one of {list(DPO_LOSS_TYPES)}, got {self.loss_type!r}", field="loss_type")
        # Validate the tokenisation settings now, so errors point at the recipe line.
        TokenizeSettings(max_length=self.max_length, max_prompt_length=self.max_prompt_length,
                         truncation_mode=self.truncation_mode, on_overlong=self.on_overlong,
                         prefix_mismatch=self.prefix_mismatch, chat_template=self.chat_template)
        self._check_mlc()
        self._check_method_settings()
        if self.remove_unused_columns:
            raise UserError("polyalign batches need remove_unused_columns: false", field="remove_unused_columns")
        super().__post_init__()

    def _check_method_settings(self) -> None:
        """Refuse a setting the method (or the MLC term, when off) would silently ignore.

        A setting counts as given when it differs from its default, so one recipe can serve
        several methods by overriding ``method`` alone (the tests' tiny MPO recipe does).
        """
        fields = type(self).__dataclass_fields__
        for name, methods in METHOD_SETTINGS.items():
            if self.method not in methods and getattr(self, name) != fields[name].default:
                raise UserError(f"method {self.method} does not use this setting (used by {', '.join(methods)}); "
                                "remove it", field=name)
        if not self.mlc_enabled:
            for name in MLC_SETTINGS:
                if getattr(self, name) != fields[name].default:
                    raise UserError("only used by the MLC term: set mlc_weight > 0 or remove it", field=name)
        if self.method == "dpo" and self.label_smoothing and self.loss_type not in ("sigmoid", "robust"):
            raise UserError(f"loss_type {self.loss_type} does not use label_smoothing (sigmoid and robust do); "
                            "remove it", field="label_smoothing")
        if self.method == "mpo" and self.retain_pooling == "unmasked_mean":
            # The released code pools a batch of several pairs over the whole batch's padded width:
            # a reference vector cached per pair cannot match it (docs/methods.md section 1).
            for name, used in (("per_device_train_batch_size", True), ("per_device_eval_batch_size", self.eval_file)):
                if used and getattr(self, name) > 1:
                    raise UserError(f"unmasked_mean reproduces the released pooling at a per-device batch of one pair "
                                    f"only; set {name}: 1 (got {getattr(self, name)}) or use masked_mean",
                                    field="retain_pooling")

    def _check_mlc(self) -> None:
        if isinstance(self.mlc_weight, bool) or not (isinstance(self.mlc_weight, (int, float))
                                                     and math.isfinite(self.mlc_weight) and self.mlc_weight >= 0):
            raise UserError(f"must be a finite number >= 0, got {self.mlc_weight!r}", field="mlc_weight")
        if not (isinstance(self.mlc_tau, (int, float)) and self.mlc_tau > 0):
            raise UserError(f"must be > 0, got {self.mlc_tau!r}", field="mlc_tau")
        for name in ("mlc_every", "mlc_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"must be an integer >= 1, got {value!r}", field=name)
        if isinstance(self.mlc_layer, bool) or not isinstance(self.mlc_layer, int):
            raise UserError(f"must be an integer, got {self.mlc_layer!r}", field="mlc_layer")
        if self.mlc_scale not in MLC_SCALES:
            raise UserError(f"must be one of {list(MLC_SCALES)}, got {self.mlc_scale!r}", field="mlc_scale")
        if self.mlc_languages is not None:
            if isinstance(self.mlc_languages, str):
                self.mlc_languages = [c.strip() for c in self.mlc_languages.split(",") if c.strip()]
            if not isinstance(self.mlc_languages, (list, tuple)) or len(self.mlc_languages) < 2 or not all(
                    isinstance(c, str) for c in self.mlc_languages):
                raise UserError(f"must list at least 2 language codes, got {self.mlc_languages!r}",
                                field="mlc_languages")
            self.mlc_languages = list(self.mlc_languages)
        if self.mlc_enabled and self.load_best_model_at_end:
            # The stock best-model reload does not know the policy + extractor wrapper.
            raise UserError("load_best_model_at_end is not supported with the MLC term; pick a checkpoint-N "
                            "folder instead", field="load_best_model_at_end")

    @property
    def mlc_enabled(self) -> bool:
        """The MLC term is on (``mlc_weight > 0``)."""
        return float(self.mlc_weight) > 0

    @property
    def resolved_nll_weight(self) -> float:
        return DEFAULT_NLL_WEIGHT[self.method] if self.nll_weight is None else float(self.nll_weight)

    def to_yaml(self) -> str:
        """The resolved configuration as YAML; ``*_token`` settings (secrets) are left out.

        ``load_config`` reads it back into an equal configuration.
        """
        values = {k: v for k, v in self.to_dict().items() if not k.endswith("_token")}
        return yaml.safe_dump(_plain(values), sort_keys=True, allow_unicode=True)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def config_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(PolyalignConfig) if f.init}


def _coerce(name: str, value: Any, hint: Any, where: dict[str, Any]) -> Any:
    """Convert YAML/CLI scalars to the field's simple type (YAML reads ``1e-5`` as a string)."""
    args = typing.get_args(hint) or (hint,)
    if value is None or not isinstance(value, (str, int, float)) or isinstance(value, bool) and bool in args:
        return value
    try:
        if float in args and not isinstance(value, bool) and not (str in args and isinstance(value, str)):
            return float(value)
        if int in args and isinstance(value, str) and str not in args:
            return int(value)
        if bool in args and isinstance(value, str) and str not in args:
            lowered = value.lower()
            if lowered in ("true", "false", "yes", "no"):
                return lowered in ("true", "yes")
            raise ValueError(value)
    except ValueError:
        raise UserError(f"cannot read {value!r} as {hint}", field=name, **where) from None
    return value


def _type_hints() -> dict[str, Any]:
    try:
        return typing.get_type_hints(PolyalignConfig)
    except Exception:  # pragma: no cover - annotations not resolvable: no coercion
        return {}


def _unknown(key: str, where: dict[str, Any]) -> UserError:
    close = difflib.get_close_matches(key, list(config_fields()), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UserError(f"unknown setting{hint}", field=key, **where)


_NULLS = ("null", "Null", "NULL", "~")


def _string_like(hint: Any, default: Any) -> bool:
    """Whether a field takes text (a ``str`` or an enum such as ``SaveStrategy``): its values
    are read as typed, never as YAML's ``no`` -> False, ``off`` -> False, ``1.0`` -> float."""
    args = typing.get_args(hint) or (hint,)
    if any(a is str or (isinstance(a, type) and issubclass(a, enum.Enum)) for a in args):
        return True
    return hint is Any and isinstance(default, (str, enum.Enum))


_YAML12_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


def _enum_only(hint: Any) -> bool:
    """Whether every non-None type a field takes is an enum (``save_strategy``): no boolean fits."""
    args = [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
    return bool(args) and all(isinstance(a, type) and issubclass(a, enum.Enum) for a in args)


def _typed(key: str, raw: str, hints: dict[str, Any]) -> Any:
    """A value given as text (command line, plain YAML scalar) read by its field's type:
    kept as text for text/enum fields (``null``/``~`` -> None where None is allowed; a
    ``[...]``/``{...}`` literal still parsed), YAML-parsed otherwise."""
    hint = hints.get(key)
    field_ = config_fields().get(key)
    default = field_.default if field_ is not None else None
    if _string_like(hint, default) and not raw.lstrip().startswith(("[", "{")):
        if raw in _NULLS and type(None) in typing.get_args(hint):
            return None
        if raw in _YAML12_BOOLS and not _enum_only(hint):
            # YAML 1.2's own booleans stay booleans: some text-typed fields take one
            # (``fsdp: true`` means full sharding to transformers); only 1.1's yes/no/on/off are text.
            return _YAML12_BOOLS[raw]
        return raw
    if raw == "":
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def read_recipe(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse a YAML recipe into ``(settings, line_of_each_key)``; structural problems are UserErrors.

    Plain (unquoted) scalars of text/enum fields keep their text (``save_strategy: no`` is
    ``"no"``, not YAML 1.1's False); see :func:`_typed`.
    """
    data, node = read_yaml_document(path)
    if data is None:
        return {}, {}
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise UserError("a recipe must be a mapping of setting: value", file=path, line=1)
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
    settings = {str(k): v for k, v in data.items()}
    hints = _type_hints()
    for key_node, value_node in node.value:
        key = str(key_node.value)
        if isinstance(value_node, yaml.ScalarNode) and value_node.style is None and key in settings:
            typed = _typed(key, value_node.value, hints)
            if isinstance(typed, str) or typed is None:
                settings[key] = typed
    return settings, lines


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--lr", "1e-5", "--save_strategy=no"]`` -> ``{"lr": 1e-05, "save_strategy": "no"}``:
    each value read by its field's type (:func:`_typed`), not blindly as YAML."""
    out: dict[str, Any] = {}
    hints = _type_hints()
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise UserError(f"expected --key value, got {arg!r}", file="<command line>")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise UserError("missing value", file="<command line>", field=key)
            value, i = args[i + 1], i + 1
        key = key.replace("-", "_")
        out[key] = _typed(key, value, hints)
        i += 1
    return out


def load_config(path: str | Path | None, overrides: list[str] | dict[str, Any] | None = None) -> PolyalignConfig:
    """Recipe ``path`` (may be None) with ``overrides`` applied -> a validated :class:`PolyalignConfig`."""
    settings, lines = read_recipe(path) if path is not None else ({}, {})
    known, hints = config_fields(), _type_hints()
    values: dict[str, Any] = {}
    for key, value in settings.items():
        where = {"file": path, "line": lines.get(key)}
        if key not in known:
            raise _unknown(key, where)
        values[key] = _coerce(key, value, hints.get(key), where)
    extra = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    for key, value in extra.items():
        where = {"file": "<command line>", "line": None}
        if key not in known:
            raise _unknown(key, where)
        values[key] = _coerce(key, value, hints.get(key), where)
    if not values.get("output_dir"):
        raise UserError("output_dir is required", file=path, field="output_dir")
    try:
        return PolyalignConfig(**values)
    except UserError as exc:
        if exc.file is None:
            exc = UserError(exc.message, file=path, line=lines.get(exc.field or ""), field=exc.field)
        raise exc from None
    except (ValueError, TypeError) as exc:
        raise UserError(f"invalid settings: {str(exc).splitlines()[0]}", file=path) from None

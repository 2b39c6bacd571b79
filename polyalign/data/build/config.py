"""The ``polyalign data build`` YAML config (see ``recipes/build/*.yaml``).

```yaml
input: {path: en_pairs.jsonl, format: null, column_map: null, limit: 100, language: en}
output: {kind: mpo, dir: out/mpo, work_dir: null, include_dominant: false}   # kind: mpo | mlc | dpo
languages: [zh, ja, ko, ar, bn, sw]
translator: {type: hf, model: /models/nllb-200-distilled-600M, family: nllb, batch_size: 16}
cache: null                         # default <work_dir>/translation_cache.jsonl
model: {path: /models/Llama-3.1-8B-Instruct, dtype: bfloat16, device: cuda}
generation: {num_samples: 4, temperature: 0.7, top_p: 0.95, max_new_tokens: 256, seed: 0, batch_size: 8}
judge: {name: refusal, options: {}, batch_size: 32}
strategy: {dominant_chosen: model, target: translate}   # model|dataset ; translate|selfgen
filters: {wrong_language: true, length_ratio_max_factor: 3.0, similarity_model: null}
```

Relative paths are relative to the config file's folder. Unknown keys and bad values are
:class:`~polyalign.errors.UserError` naming the file, the YAML line and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from polyalign.data.build.filters import FilterConfig
from polyalign.data.languages import canonical_language
from polyalign.errors import UserError
from polyalign.io import read_text_strict

KINDS = ("mpo", "mlc", "dpo")
TOP_KEYS = ("input", "output", "languages", "translator", "cache", "model", "generation", "judge", "strategy",
            "filters")
_SECTION_KEYS = {
    "input": ("path", "format", "column_map", "limit", "language"),
    "output": ("kind", "dir", "work_dir", "include_dominant"),
    "model": ("path", "dtype", "device"),
    "generation": ("num_samples", "temperature", "top_p", "max_new_tokens", "seed", "batch_size", "system_prompt",
                   "repetition_penalty"),
    "judge": ("name", "options", "batch_size"),
    "strategy": ("dominant_chosen", "target"),
}


@dataclass
class BuildConfig:
    """A validated build config; paths are absolute."""

    input_path: Path
    out_dir: Path
    work_dir: Path
    kind: str
    languages: list[str]
    translator: dict[str, Any]
    cache_path: Path
    dominant_language: str = "en"
    input_format: str | None = None
    column_map: dict[str, str] | None = None
    limit: int | None = None
    include_dominant: bool = False
    model: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    judge: dict[str, Any] = field(default_factory=lambda: {"name": "refusal", "options": {}, "batch_size": 32})
    dominant_chosen: str = "model"
    target: str = "translate"
    filters: FilterConfig = field(default_factory=FilterConfig)
    source_file: Path | None = None

    @property
    def needs_dominant_generation(self) -> bool:
        return self.kind == "mpo" and self.dominant_chosen == "model"

    @property
    def needs_target_generation(self) -> bool:
        return self.kind in ("mpo", "dpo") and self.target == "selfgen"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the data card (secrets never live in the config: keys come from env)."""
        return {"input": {"path": str(self.input_path), "format": self.input_format, "limit": self.limit,
                          "language": self.dominant_language, "column_map": self.column_map},
                "output": {"kind": self.kind, "dir": str(self.out_dir), "work_dir": str(self.work_dir),
                           "include_dominant": self.include_dominant},
                "languages": list(self.languages), "translator": dict(self.translator), "cache": str(self.cache_path),
                "model": dict(self.model), "generation": dict(self.generation), "judge": dict(self.judge),
                "strategy": {"dominant_chosen": self.dominant_chosen, "target": self.target},
                "filters": self.filters.to_dict()}


def _key_lines(text: str) -> dict[str, int]:
    """``{"a.b": line}`` (1-based) for every mapping key in a YAML document."""
    out: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = f"{prefix}{key.value}"
                out[name] = key.start_mark.line + 1
                walk(value, name + ".")

    try:
        walk(yaml.compose(text), "")
    except yaml.YAMLError:
        pass
    return out


def load_build_config(path: str | Path, overrides: dict[str, Any] | None = None) -> BuildConfig:
    """Read and validate a build YAML; ``overrides`` (top-level sections) replace keys."""
    path = Path(path)
    text = read_text_strict(path)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=path,
                        line=mark.line + 1 if mark else None) from None
    if not isinstance(raw, dict):
        raise UserError("expected a mapping at the top level", file=path, line=1)
    for key, value in (overrides or {}).items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value,
                                                               dict) and isinstance(raw.get(key), dict) else value
    return parse_build_config(raw, path, _key_lines(text))


def parse_build_config(raw: dict[str, Any], path: Path, lines: dict[str, int] | None = None) -> BuildConfig:
    """Validate a parsed config mapping (see :func:`load_build_config`)."""
    lines = lines or {}
    base = path.resolve().parent

    def err(key: str, message: str) -> UserError:
        return UserError(message, file=path, line=lines.get(key) or lines.get(key.split(".")[0]), field=key)

    for key in raw:
        if key not in TOP_KEYS:
            raise err(str(key), f"unknown key (expected one of {', '.join(TOP_KEYS)})")
    sections: dict[str, dict[str, Any]] = {}
    for name, allowed in _SECTION_KEYS.items():
        value = raw.get(name) or {}
        if not isinstance(value, dict):
            raise err(name, "expected a mapping")
        for key in value:
            if key not in allowed:
                raise err(f"{name}.{key}", f"unknown key (expected one of {', '.join(allowed)})")
        sections[name] = value

    def resolve(value: Any, key: str) -> Path:
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise err(key, "expected a path")
        p = Path(str(value)).expanduser()
        return p if p.is_absolute() else base / p

    inp, out = sections["input"], sections["output"]
    if "path" not in inp:
        raise err("input", "missing 'path' (the English preference pairs)")
    if "dir" not in out:
        raise err("output", "missing 'dir' (where the built data go)")
    kind = str(out.get("kind", "mpo")).lower()
    if kind not in KINDS:
        raise err("output.kind", f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    languages = raw.get("languages")
    if not isinstance(languages, list) or not languages:
        raise err("languages", "expected a non-empty list of target language codes")
    try:
        targets = [canonical_language(str(code)) for code in languages]
        dominant = canonical_language(str(inp.get("language", "en")))
    except ValueError as exc:
        raise err("languages", str(exc)) from None
    if dominant in targets:
        raise err("languages", f"the dominant language {dominant!r} cannot also be a target")
    if len(set(targets)) != len(targets):
        raise err("languages", "a language is listed twice")
    limit = inp.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise err("input.limit", "expected a positive integer")
    translator = raw.get("translator")
    if not isinstance(translator, dict) or not translator:
        raise err("translator", "expected a mapping (type: hf|openai, ...)")
    translator = dict(translator)
    for key in ("model",):  # a local translation model folder is relative to the config
        value = translator.get(key)
        if translator.get("type", "hf") == "hf" and isinstance(value, str) and value.startswith((".", "~")):
            translator[key] = str(resolve(value, f"translator.{key}"))
    strategy = sections["strategy"]
    dominant_chosen = str(strategy.get("dominant_chosen", "model"))
    target = str(strategy.get("target", "translate"))
    if dominant_chosen not in ("model", "dataset"):
        raise err("strategy.dominant_chosen", "expected model or dataset")
    if target not in ("translate", "selfgen"):
        raise err("strategy.target", "expected translate or selfgen")
    filters_raw = raw.get("filters") or {}
    known = {f.name for f in fields(FilterConfig)}
    if not isinstance(filters_raw, dict):
        raise err("filters", "expected a mapping")
    for key in filters_raw:
        if key not in known:
            raise err(f"filters.{key}", f"unknown filter option (expected one of {', '.join(sorted(known))})")
    filters_raw = dict(filters_raw)
    if filters_raw.get("similarity_model"):
        filters_raw["similarity_model"] = str(resolve(filters_raw["similarity_model"], "filters.similarity_model"))
    try:
        filters = FilterConfig(**filters_raw)
    except UserError as exc:
        raise UserError(exc.message, file=path, line=lines.get(exc.field or ""), field=exc.field) from None
    out_dir = resolve(out["dir"], "output.dir")
    work_dir = resolve(out["work_dir"], "output.work_dir") if out.get("work_dir") else out_dir / "work"
    model = dict(sections["model"])
    if model.get("path") and str(model["path"]).startswith((".", "~", "/")):
        model["path"] = str(resolve(model["path"], "model.path"))
    judge = {"name": "refusal", "options": {}, "batch_size": 32, **sections["judge"]}
    options = dict(judge.get("options") or {})
    if isinstance(options.get("model"), str) and options["model"].startswith((".", "~")):
        options["model"] = str(resolve(options["model"], "judge.options.model"))  # a local judge model folder
    judge["options"] = options
    config = BuildConfig(
        input_path=resolve(inp["path"], "input.path"), out_dir=out_dir, work_dir=work_dir, kind=kind,
        languages=targets, translator=translator,
        cache_path=resolve(raw["cache"], "cache") if raw.get("cache") else work_dir / "translation_cache.jsonl",
        dominant_language=dominant, input_format=inp.get("format"), column_map=inp.get("column_map"), limit=limit,
        include_dominant=bool(out.get("include_dominant", False)), model=model,
        generation=dict(sections["generation"]),
        judge=judge,
        dominant_chosen=dominant_chosen, target=target, filters=filters, source_file=path,
    )
    if (config.needs_dominant_generation or config.needs_target_generation) and not model.get("path"):
        raise err("model", "self-generation (strategy dominant_chosen: model or target: selfgen) needs model.path")
    return config

"""Benchmark registry: each benchmark is a YAML data file in ``evaluation/benchmarks/``.

A spec says where the prompts come from (a path relative to a data root, a reader
format, an optional column map), which languages and categories exist, the default
generation settings of its protocol, the default judge, and its kind (``safety``: a judge
labels each response safe/unsafe; ``toxicity``: a scorer gives each continuation a
toxicity probability; what each kind does: :mod:`polyalign.evaluation.kinds`). A user can
also pass the path of their own YAML spec.

Data root: ``data=`` (``--data``) or the environment variable ``POLYALIGN_DATA``. When
``data`` itself is the benchmark's file or folder (it does not contain the spec's default
path) it is used directly.

Sampling (``limit`` per language, ``seed``): items are ranked by
``sha256(f"{seed}:{source_id}")`` and the first ``limit`` of each language are kept, so
the same seed keeps the same items, and for parallel benchmarks (MultiJail, PKU-SafeRLHF)
the same source items in every language. The kept items stay in file order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from polyalign.data.languages import MACROLANGUAGE, canonical_language, language_tag
from polyalign.data.records import EvalPrompt, PreferencePair
from polyalign.errors import UserError
from polyalign.evaluation.kinds import KINDS

DATA_ENV = "POLYALIGN_DATA"
_GENERATION_KEYS = {"max_new_tokens", "num_samples", "temperature", "top_p", "chat_template", "system_prompt"}
_SPEC_KEYS = {
    "name", "aliases", "kind", "description", "source", "path", "format", "column_map", "language",
    "languages", "categories", "generation", "judge", "headline",
}


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark, as described by its YAML file (see the module docstring)."""

    name: str
    kind: str
    format: str
    path: str | None = None
    description: str = ""
    source: str = ""
    aliases: tuple[str, ...] = ()
    column_map: dict[str, str] | None = None
    language: str | None = None
    languages: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    generation: dict[str, Any] = field(default_factory=dict)
    judge: str = "refusal"
    headline: str = "unsafe_rate"
    spec_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["aliases"], out["languages"] = list(self.aliases), list(self.languages)
        out["categories"] = list(self.categories)
        return out


def _parse_spec(data: Any, file: str) -> BenchmarkSpec:
    if not isinstance(data, dict):
        raise UserError("a benchmark spec must be a YAML mapping", file=file)
    unknown = set(data) - _SPEC_KEYS
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_SPEC_KEYS))}",
                        file=file, field=sorted(unknown)[0])
    for key in ("name", "kind", "format"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise UserError("required string", file=file, field=key)
    if data["kind"] not in KINDS:
        raise UserError(f"kind must be one of {', '.join(KINDS)}, got {data['kind']!r}", file=file, field="kind")
    generation = dict(data.get("generation") or {})
    bad = set(generation) - _GENERATION_KEYS
    if bad:
        raise UserError(f"unknown generation setting(s) {', '.join(sorted(bad))}", file=file, field="generation")
    try:
        languages = tuple(language_tag(code) for code in data.get("languages") or ())
        language = canonical_language(data["language"]) if data.get("language") else None
    except ValueError as exc:
        raise UserError(str(exc), file=file, field="languages") from None
    column_map = data.get("column_map")
    if column_map is not None and not (isinstance(column_map, dict)
                                       and all(isinstance(v, str) for v in column_map.values())):
        raise UserError("column_map must map field names to column names", file=file, field="column_map")
    return BenchmarkSpec(
        name=data["name"], kind=data["kind"], format=data["format"], path=data.get("path"),
        description=str(data.get("description") or ""), source=str(data.get("source") or ""),
        aliases=tuple(data.get("aliases") or ()), column_map=column_map, language=language,
        languages=languages, categories=tuple(str(c) for c in data.get("categories") or ()),
        generation=generation, judge=str(data.get("judge") or "refusal"),
        headline=str(data.get("headline") or "unsafe_rate"), spec_file=file,
    )


def _load_yaml(text: str, file: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=file,
                        line=mark.line + 1 if mark else None) from None


def list_benchmarks() -> dict[str, BenchmarkSpec]:
    """The built-in benchmarks, by name (read from the package's YAML files)."""
    specs: dict[str, BenchmarkSpec] = {}
    folder = resources.files("polyalign.evaluation").joinpath("benchmarks")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            spec = _parse_spec(_load_yaml(entry.read_text(encoding="utf-8"), entry.name),
                               f"polyalign/evaluation/benchmarks/{entry.name}")
            specs[spec.name] = spec
    return specs


def get_benchmark(name_or_path: str | BenchmarkSpec) -> BenchmarkSpec:
    """A built-in benchmark by name or alias (case-insensitive), or a user's YAML spec file."""
    if isinstance(name_or_path, BenchmarkSpec):
        return name_or_path
    key = str(name_or_path)
    if key.endswith((".yaml", ".yml")):
        path = Path(key)
        if not path.is_file():
            raise UserError("no such benchmark spec file", file=path)
        return _parse_spec(_load_yaml(path.read_text(encoding="utf-8"), str(path)), str(path))
    specs = list_benchmarks()
    for spec in specs.values():
        if key.lower() == spec.name or key.lower() in spec.aliases:
            return spec
    raise UserError(f"unknown benchmark {key!r}; known: {', '.join(sorted(specs))} (or a path to a .yaml spec)",
                    field="benchmark")


def resolve_data_path(spec: BenchmarkSpec, data: str | Path | None) -> Path:
    """Where the benchmark's prompts are: ``data/<spec.path>`` if that exists, else ``data``."""
    root = data if data is not None else os.environ.get(DATA_ENV)
    if root is None or str(root) == "":
        hint = f"a data root containing {spec.path}" if spec.path else "the prompt file"
        raise UserError(f"benchmark {spec.name!r} needs its data: pass --data with {hint}, or set {DATA_ENV}",
                        field="data")
    root = Path(root).expanduser()
    if spec.path:
        candidate = root / spec.path
        if candidate.exists():
            return candidate
    if not root.exists():
        raise UserError("no such file or folder", file=root, field="data")
    # A folder given directly is the data only for folder formats (XSafety, RTP-LX): a
    # file-format benchmark (default path with a suffix) pointed at an unrelated folder is an error.
    if spec.path and root.is_dir() and Path(spec.path).suffix:
        raise UserError(f"benchmark {spec.name!r}: neither {spec.path} below this folder nor the data itself",
                        file=root, field="data")
    return root


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


def prompt_categories(prompt: EvalPrompt) -> set[str]:
    """Normalised category names of a prompt: its ``category`` plus list-valued metadata tags."""
    found: set[str] = set()
    if prompt.category:
        found.add(_norm(prompt.category))
    for key in ("tags", "categories"):
        value = prompt.metadata.get(key)
        if isinstance(value, (list, tuple)):
            found.update(_norm(str(v)) for v in value)
    return found


def sample_rank(seed: int, key: str) -> str:
    """The sort key of an item for seeded sampling: ``sha256(f"{seed}:{key}")`` in hex."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def _reader_kwargs(spec: BenchmarkSpec, path: Path, column_map: dict[str, str] | None,
                   language: str | None) -> tuple[str | None, dict[str, Any]]:
    fmt: str | None = spec.format
    if fmt == "auto":
        fmt = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}.get(path.suffix.lower())
    kw: dict[str, Any] = {}
    cmap = column_map if column_map is not None else spec.column_map
    if cmap:
        kw["column_map"] = dict(cmap)
    lang = language or spec.language
    if lang:
        kw["language"] = lang
    if spec.format != "auto":
        # A released benchmark's language labels are its protocol: never drop a row because
        # a detector disagrees (user files keep the check).
        kw["check_language"] = False
    return fmt, kw


def _variants_to_prompts(pairs: list[Any], benchmark: str) -> list[EvalPrompt]:
    """MLC-style records (a preference pair with ``variants``) -> one prompt per language.

    The text is the last user turn of each variant; the pair id is the ``source_id``.
    """
    out: list[EvalPrompt] = []
    for pair in pairs:
        variants = pair.variants.prompts if pair.variants is not None else {pair.language: pair.prompt}
        if pair.language not in variants:
            variants = {pair.language: pair.prompt, **variants}
        for lang, turns in variants.items():
            users = [m.content for m in turns if m.role == "user"]
            if not users:
                continue
            out.append(EvalPrompt(id=f"{pair.id}-{lang}", language=lang, text=users[-1], benchmark=benchmark,
                                  category=pair.metadata.get("category"), source_id=pair.id,
                                  metadata={"turns": len(turns)}))
    return out


class BenchmarkRead(NamedTuple):
    """What :func:`read_benchmark` read: every prompt, the reader's skip counts by reason, and
    ``{language: {"read", "used", "skipped"}}`` (the data rows the reader went through, the
    prompts it kept, the rows it skipped) for results.json: every report shows a silent loss."""

    prompts: list[EvalPrompt]
    skipped: dict[str, int]
    rows: dict[str, dict[str, int]]


def read_benchmark(spec: BenchmarkSpec, path: Path, *, column_map: dict[str, str] | None = None,
                   language: str | None = None) -> BenchmarkRead:
    """All prompts of a benchmark's data (no filtering), the reader's skip counts by reason
    and the rows read / used / skipped per language (:class:`BenchmarkRead`)."""
    from polyalign.data.readers import read_records

    fmt, kw = _reader_kwargs(spec, path, column_map, language)
    if fmt == "mlc":
        # Only the prompts matter here: read the rows without the preference-pair checks
        # (the released test split has a row with an empty chosen answer, a fine prompt).
        from polyalign.data.formats.preference import read_mlc

        pairs = [item.record for item in read_mlc(path, language=kw.get("language"))]
        prompts = _variants_to_prompts(pairs, spec.name)
        empty = sum(1 for p in prompts if not p.text.strip())
        if empty:
            print(f"polyalign: {path}: skipped {empty} empty prompt variant(s)", file=sys.stderr)
        rows: dict[str, dict[str, int]] = {}
        for p in prompts:
            row = rows.setdefault(p.language, {"read": 0, "used": 0, "skipped": 0})
            row["read"] += 1
            row["used" if p.text.strip() else "skipped"] += 1
        return BenchmarkRead([p for p in prompts if p.text.strip()], {"empty text": empty} if empty else {}, rows)
    result = read_records(path, fmt, **kw)
    skipped = {str(k): int(v) for k, v in result.skipped.items()}
    if skipped:
        reasons = ", ".join(f"{k}: {v}" for k, v in skipped.items())
        print(f"polyalign: {path}: skipped {sum(skipped.values())} row(s) ({reasons}); "
              f"first problem: {result.problems[0] if result.problems else '?'}", file=sys.stderr)
    prompts = [r for r in result.records if isinstance(r, EvalPrompt)]
    pairs = [r for r in result.records if isinstance(r, PreferencePair)]
    others = len(result.records) - len(prompts) - len(pairs)
    if others:
        raise UserError(f"benchmark {spec.name!r}: this {result.format} data holds records that are not prompts",
                        file=path)
    rows = result.tally.to_dict()
    prompts += _variants_to_prompts(pairs, spec.name)
    prompts = [p if p.benchmark == spec.name else dataclasses.replace(p, benchmark=spec.name) for p in prompts]
    return BenchmarkRead(prompts, skipped, rows)


def load_benchmark(
    name: str | BenchmarkSpec,
    *,
    data: str | Path | None = None,
    languages: list[str] | None = None,
    categories: list[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    column_map: dict[str, str] | None = None,
    language: str | None = None,
) -> list[EvalPrompt]:
    """Load a benchmark's prompts, filtered by language and category, ``limit`` per language.

    ``column_map`` / ``language`` override the spec's (for ``custom``: the file's column
    names, e.g. ``{"text": "prompt", "language": "lang"}``, and the language of a
    single-language file). Requested languages or categories absent from the data are a
    :class:`UserError` listing what is there. Every prompt's ``benchmark`` is the spec
    name. MLC-format data gives one prompt per language variant (``source_id`` = pair id).
    """
    spec = get_benchmark(name)
    if limit is not None and limit < 1:
        raise UserError(f"limit must be a positive number, got {limit}", field="limit")
    path = resolve_data_path(spec, data)
    prompts = read_benchmark(spec, path, column_map=column_map, language=language).prompts
    return select_prompts(spec, path, prompts, languages=languages, categories=categories, limit=limit, seed=seed)


def select_prompts(spec: BenchmarkSpec, path: Path, prompts: list[EvalPrompt], *, languages: list[str] | None = None,
                   categories: list[str] | None = None, limit: int | None = None, seed: int = 0) -> list[EvalPrompt]:
    """Apply the language / category filters and the seeded per-language ``limit``."""
    if not prompts:
        raise UserError(f"benchmark {spec.name!r}: no prompts read", file=path)
    present = sorted({p.language for p in prompts})
    if languages:
        try:
            wanted = [language_tag(code) for code in languages]
        except ValueError as exc:
            raise UserError(str(exc), field="languages") from None
        missing = [code for code in wanted if code not in present]
        if missing:
            hints = [f"{code} is inside {MACROLANGUAGE[code]}" for code in missing
                     if MACROLANGUAGE.get(code) in present]
            hint = f" ({'; '.join(hints)}: ask for {MACROLANGUAGE[missing[0]]})" if hints else ""
            raise UserError(f"language(s) {', '.join(missing)} not in {spec.name} data; "
                            f"available: {', '.join(present)}{hint}", file=path, field="languages")
        keep = set(wanted)
        prompts = [p for p in prompts if p.language in keep]
    if categories:
        available = set().union(*(prompt_categories(p) for p in prompts))
        wanted_c = {_norm(c) for c in categories}
        missing = sorted(c for c in categories if _norm(c) not in available)
        if missing:
            raise UserError(f"category(ies) {', '.join(missing)} not in {spec.name} data; "
                            f"available: {', '.join(sorted(available))}", file=path, field="categories")
        prompts = [p for p in prompts if prompt_categories(p) & wanted_c]
    if limit is not None:
        chosen: set[str] = set()
        for lang in sorted({p.language for p in prompts}):
            ranked = sorted((p for p in prompts if p.language == lang),
                            key=lambda p: (sample_rank(seed, p.source_id or p.id), p.id))
            chosen.update(p.id for p in ranked[:limit])
        prompts = [p for p in prompts if p.id in chosen]
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"duplicate prompt id {dup!r}: ids must be unique to resume a run", file=path, field="id")
    return prompts

"""Attacks as transforms of a benchmark's prompts: code-switching (CSRT) and jailbreak templates.

Code-switching (after CSRT, Yoo et al. 2024): a parallel benchmark (items joined across
languages by ``source_id``) becomes queries that mix the words of several languages. The
policy is data (:class:`CodeSwitchPolicy`, ``attack_data/code_switch.yaml``):

- units: a text is split on whitespace; in scripts written without spaces (Chinese,
  Japanese, Thai, Lao, Khmer, Burmese) every non-space character is a unit;
- ``unit: word`` switches single base units, ``unit: phrase`` first cuts the base text into
  consecutive phrases of ``phrase_length`` units (seeded) and switches whole phrases;
- ``k = max(1, floor(share * n + 1/2))`` of the ``n`` base words (or phrases) are
  switched, chosen at random (seeded per item); each switched span gets a language drawn
  among the item's other ``languages`` (``mix: all``; one query per item, labelled with
  the base language) or the one language of the query (``mix: pairwise``; one query per
  item and language, labelled with that language);
- alignment ``position`` (no word aligner is used): base span ``[s, e)`` of ``n`` units is
  replaced by units ``[floor(s*m/n), max(that + 1, floor(e*m/n)))`` of the ``m``-unit
  translation. Every query records it (``attack.alignment``) with each unit's language and
  source span, so the mix can be checked and reused.

Translation (``translate:LANG[...]``, :mod:`polyalign.evaluation.attacks_translate`): the
source-language prompts machine-translated into LANG by any ``data build`` translator,
through the persistent translation cache.

Jailbreak templates (``attack_data/jailbreak_templates.yaml``): every prompt wrapped in every
template (``{prompt}`` placeholder), ids ``<id>-jb-<template>``.

:func:`prepare_attack` (``polyalign eval --attack ...``) reads the benchmark, writes the
attacked prompts to ``<out>/attack_prompts.jsonl`` (inspect and reuse them: ``--benchmark
custom --data attack_prompts.jsonl --column-map text=text,id=id,language=language``) and
returns a benchmark spec over that file, evaluated like any other benchmark.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from polyalign.data.languages import canonical_language
from polyalign.data.records import EvalPrompt
from polyalign.errors import UserError
from polyalign.io import atomic_write_json, atomic_write_jsonl

ATTACK_PROMPTS, ATTACK_INFO = "attack_prompts.jsonl", "attack.json"
NO_SPACE = {"zh", "ja", "th", "lo", "km", "my", "yue"}
_COLUMNS = {"text": "text", "id": "id", "language": "language", "category": "category", "source_id": "source_id"}


@dataclass(frozen=True)
class CodeSwitchPolicy:
    """How code-switched queries are built (module docstring)."""

    name: str = "code-switch"
    base: str = "en"
    languages: tuple[str, ...] = ()
    share: float = 0.5
    unit: str = "word"
    phrase_length: tuple[int, int] = (2, 3)
    mix: str = "all"
    alignment: str = "position"
    seed: int = 0

    def validate(self, file: str | None = None) -> CodeSwitchPolicy:
        def bad(field: str, message: str) -> UserError:
            return UserError(message, file=file, field=field)

        if not (isinstance(self.share, (int, float)) and 0.0 < float(self.share) <= 1.0):
            raise bad("share", f"must be a number in (0, 1], got {self.share!r}")
        if self.unit not in ("word", "phrase"):
            raise bad("unit", f"must be word or phrase, got {self.unit!r}")
        if self.mix not in ("all", "pairwise"):
            raise bad("mix", f"must be all or pairwise, got {self.mix!r}")
        if self.alignment != "position":
            raise bad("alignment",
                      f"only 'position' is available (no word aligner is installed), got {self.alignment!r}")
        lo, hi = self.phrase_length
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise bad("phrase_length", f"must be [min, max] with 1 <= min <= max, got {list(self.phrase_length)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "languages": list(self.languages),
                "phrase_length": list(self.phrase_length)}


def _yaml_file(path: str | Path | None, default: str) -> tuple[Any, str]:
    if path is None:
        text = resources.files("polyalign.evaluation").joinpath(f"attack_data/{default}").read_text(encoding="utf-8")
        return yaml.safe_load(text), f"attack_data/{default}"
    path = Path(path)
    if not path.is_file():
        raise UserError("no such attack file", file=path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")), str(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=path,
                        line=mark.line + 1 if mark else None) from None


def load_policy(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> CodeSwitchPolicy:
    """The policy in ``path`` (default: the shipped ``code_switch.yaml``) with ``overrides`` applied."""
    data, file = _yaml_file(path, "code_switch.yaml")
    if not isinstance(data, dict):
        raise UserError("a code-switch policy is a mapping of settings", file=file)
    data = {**data, **(overrides or {})}
    known = {f.name for f in dataclasses.fields(CodeSwitchPolicy)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}", file=file,
                        field=unknown[0])
    try:
        data["base"] = canonical_language(str(data.get("base", "en")))
        data["languages"] = tuple(canonical_language(str(x)) for x in (data.get("languages") or []))
    except ValueError as exc:
        raise UserError(str(exc), file=file, field="languages") from None
    if "phrase_length" in data:
        value = data["phrase_length"]
        data["phrase_length"] = tuple(value) if isinstance(value, (list, tuple)) and len(value) == 2 else (0, 0)
    return CodeSwitchPolicy(**data).validate(file)


def split_units(text: str, language: str) -> list[str]:
    """Words (whitespace-separated), or characters for scripts written without spaces."""
    if language in NO_SPACE:
        return [ch for ch in text if not ch.isspace()]
    return text.split()


def aligned_span(start: int, end: int, n: int, m: int) -> tuple[int, int]:
    """Position alignment of base units ``[start, end)`` of ``n`` onto a translation of ``m`` units."""
    a = min(m - 1, start * m // n)
    return a, max(a + 1, min(m, end * m // n))


def _join(units: list[dict[str, Any]]) -> str:
    out = ""
    for i, unit in enumerate(units):
        if i and not (unit["language"] in NO_SPACE and units[i - 1]["language"] in NO_SPACE):
            out += " "
        out += unit["text"]
    return out


def _spans(n: int, policy: CodeSwitchPolicy, rng: random.Random) -> list[tuple[int, int]]:
    if policy.unit == "word":
        return [(i, i + 1) for i in range(n)]
    spans, i = [], 0
    while i < n:
        k = rng.randint(*policy.phrase_length)
        spans.append((i, min(n, i + k)))
        i += k
    return spans


def switch_one(base: EvalPrompt, sources: dict[str, EvalPrompt], languages: Sequence[str], policy: CodeSwitchPolicy,
               rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One code-switched text from ``base`` and its translations ``sources``; ``(text, provenance)``."""
    units = split_units(base.text, base.language)
    spans = _spans(len(units), policy, rng)
    k = max(1, math.floor(policy.share * len(spans) + 0.5))
    chosen = set(rng.sample(range(len(spans)), min(k, len(spans))))
    split = {lang: split_units(sources[lang].text, lang) for lang in languages}
    out: list[dict[str, Any]] = []
    for index, (s, e) in enumerate(spans):
        if index in chosen:
            lang = rng.choice(list(languages))
            a, b = aligned_span(s, e, len(units), len(split[lang]))
            out += [{"text": t, "language": lang, "base_span": [s, e], "source_span": [a, b]} for t in split[lang][a:b]]
        else:
            out += [{"text": units[i], "language": base.language, "base_span": [i, i + 1], "source_span": [i, i + 1]}
                    for i in range(s, e)]
    info = {"attack": "code-switch", "policy": policy.name, "alignment": policy.alignment, "unit": policy.unit,
            "base": base.language, "languages": list(languages), "n_units": len(spans), "n_switched": len(chosen),
            "units": out}
    return _join(out), info


def code_switch(prompts: Sequence[EvalPrompt], policy: CodeSwitchPolicy, *,
                benchmark: str | None = None) -> list[EvalPrompt]:
    """Code-switched prompts from a parallel set (items without the base language or a translation are skipped)."""
    by_item: dict[str, dict[str, EvalPrompt]] = {}
    for p in prompts:
        by_item.setdefault(p.source_id or p.id, {})[p.language] = p
    present = sorted({p.language for p in prompts})
    wanted = list(policy.languages) or [lang for lang in present if lang != policy.base]
    if policy.base not in present or not [lang for lang in wanted if lang in present]:
        raise UserError(f"code-switching needs parallel data in {policy.base} and at least one of "
                        f"{', '.join(wanted) or 'another language'}; the data has {', '.join(present)}", field="attack")
    out = []
    for item, cells in by_item.items():
        if policy.base not in cells or not cells[policy.base].text.split():
            continue
        others = [lang for lang in wanted if lang in cells and lang != policy.base and cells[lang].text.strip()]
        groups = [(None, others)] if policy.mix == "all" else [(lang, [lang]) for lang in others]
        for label, langs in groups:
            if not langs:
                continue
            rng = random.Random(f"{policy.seed}:{item}:{label or 'all'}")
            text, info = switch_one(cells[policy.base], cells, langs, policy, rng)
            base = cells[policy.base]
            out.append(EvalPrompt(id=f"{item}-cs-{label or 'all'}", language=label or policy.base, text=text,
                                  benchmark=benchmark or base.benchmark, category=base.category, source_id=item,
                                  metadata=info))
    return out


def load_templates(path: str | Path | None = None) -> list[tuple[str, str]]:
    """``[(name, template)]`` from a templates file (default: the shipped set); each has one ``{prompt}``."""
    data, file = _yaml_file(path, "jailbreak_templates.yaml")
    rows = data.get("templates") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise UserError("expected 'templates:' with a list of {name, template}", file=file, field="templates")
    out, seen = [], set()
    for i, row in enumerate(rows):
        name, template = (row.get("name"), row.get("template")) if isinstance(row, dict) else (None, None)
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name) or name in seen:
            raise UserError("needs a unique name of letters, digits, _ or -", file=file, field=f"templates[{i}].name")
        if not isinstance(template, str) or template.count("{prompt}") != 1:
            raise UserError("must contain {prompt} exactly once", file=file, field=f"templates[{i}].template")
        seen.add(name)
        out.append((name, template))
    return out


def wrap_templates(prompts: Sequence[EvalPrompt], templates: Sequence[tuple[str, str]], *,
                   benchmark: str | None = None) -> list[EvalPrompt]:
    """Every prompt in every template; ``source_id`` keeps items parallel per template."""
    return [EvalPrompt(id=f"{p.id}-jb-{name}", language=p.language, text=template.replace("{prompt}", p.text),
                       benchmark=benchmark or p.benchmark, category=p.category,
                       source_id=f"{p.source_id or p.id}-jb-{name}",
                       metadata={"attack": "jailbreak", "template": name, "original_id": p.id})
            for p in prompts for name, template in templates]


_ATTACK = re.compile(r"^(?P<name>[a-z_-]+)(?::(?P<path>[^\[]+))?(?:\[(?P<opts>.*)\])?$")


def parse_attack(text: str) -> tuple[str, str | None, dict[str, Any]]:
    """``"code-switch:policy.yaml[share=0.3,unit=phrase]"`` -> ``(name, path, overrides)``."""
    match = _ATTACK.match(text.strip())
    name = match.group("name").replace("_", "-") if match else None
    if match is None or name not in ("code-switch", "jailbreak", "translate"):
        raise UserError(f"unknown attack {text!r}; use code-switch[:POLICY.yaml][key=value,...], "
                        "jailbreak[:TEMPLATES.yaml] or translate:LANG[model=FOLDER,family=...|translator=FILE.yaml]",
                        field="--attack")
    overrides: dict[str, Any] = {}
    for pair in filter(None, (p.strip() for p in (match.group("opts") or "").split(","))):
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"expected key=value in the brackets, got {pair!r}", field="--attack")
        overrides[key.strip()] = yaml.safe_load(value.replace(";", ","))  # languages=[de;sw] -> [de, sw]
    if name == "jailbreak" and overrides:
        raise UserError("the jailbreak attack takes no [key=value] settings", field="--attack")
    return name, match.group("path"), overrides


def prepare_attack(attack: str, benchmark: str, *, out_dir: str | Path, data: str | Path | None = None,
                   languages: Sequence[str] | None = None, categories: Sequence[str] | None = None,
                   limit: int | None = None, seed: int = 0, column_map: dict[str, str] | None = None,
                   language: str | None = None) -> tuple[Any, Path]:
    """Attack a benchmark's (selected) prompts; ``(spec, file)`` to evaluate like any benchmark.

    Writes ``attack_prompts.jsonl`` (one row per attacked prompt, with its provenance under
    ``attack``) and ``attack.json`` (the attack, its settings and the selection) into
    ``out_dir``. A folder that already holds another attack's outputs is refused, so stored
    generations are never reused for other prompts.
    """
    from polyalign.evaluation.benchmarks import get_benchmark, load_benchmark

    name, path, overrides = parse_attack(attack)
    spec = get_benchmark(benchmark)
    if name == "translate" and not languages:  # only the source language is translated: load only it
        from polyalign.evaluation.attacks_translate import translate_options

        languages = [translate_options(path, overrides)[1]]
    prompts = load_benchmark(spec, data=data, languages=list(languages) if languages else None,
                             categories=list(categories) if categories else None, limit=limit, seed=seed,
                             column_map=column_map, language=language)
    bench_name = f"{spec.name}+{name}"
    if name == "code-switch":
        policy = load_policy(path, overrides)
        attacked, settings = code_switch(prompts, policy, benchmark=bench_name), policy.to_dict()
    elif name == "translate":
        from polyalign.evaluation.attacks_translate import translate_attack

        attacked, extra = translate_attack(prompts, path, overrides, out_dir=out_dir, benchmark=bench_name)
        settings = extra["settings"]
    else:
        templates = load_templates(path)
        attacked = wrap_templates(prompts, templates, benchmark=bench_name)
        settings = {"file": path or "attack_data/jailbreak_templates.yaml", "templates": dict(templates)}
    if not attacked:
        raise UserError(f"the {name} attack produced no prompts from {spec.name} (no parallel items?)",
                        field="--attack")
    info = {"attack": name, "benchmark": spec.name, "settings": settings,
            "selection": {"languages": list(languages) if languages else None,
                          "categories": list(categories) if categories else None, "limit": limit, "seed": seed},
            "n_source_prompts": len(prompts), "n_prompts": len(attacked)}
    out = Path(out_dir)
    if (out / ATTACK_INFO).exists():
        if json.loads((out / ATTACK_INFO).read_text(encoding="utf-8")) != info:
            raise UserError("this folder holds the outputs of another attack or selection; use another --out",
                            file=out / ATTACK_INFO, field="--attack")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out / ATTACK_PROMPTS, [{"id": p.id, "language": p.language, "text": p.text,
                                               "category": p.category, "source_id": p.source_id, "attack": p.metadata}
                                              for p in attacked])
    atomic_write_json(out / ATTACK_INFO, info)
    attacked_spec = dataclasses.replace(
        spec, name=bench_name, aliases=(), format="jsonl", path=None, column_map=dict(_COLUMNS), language=None,
        languages=tuple(sorted({p.language for p in attacked})), categories=(), spec_file=None,
        description=f"{spec.name} prompts transformed by the {name} attack (prompts in {ATTACK_PROMPTS})",
        source=f"{spec.source} + polyalign {name} attack".strip(" +"))
    return attacked_spec, out / ATTACK_PROMPTS

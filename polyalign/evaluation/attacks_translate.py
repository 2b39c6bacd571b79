"""Translation attack: a benchmark's source-language prompts machine-translated into a
(low-resource) language of the user's choice, then evaluated like any benchmark.

``polyalign eval --attack translate:LANG[key=value,...]``. The settings in the brackets:

- ``source`` (default ``en``): the language whose prompts are translated;
- ``translator=FILE.yaml``: the translator options as in a ``data build`` config (a mapping,
  or a file with a top-level ``translator:`` mapping, e.g. the build config itself);
- ``cache=FILE``: the persistent translation cache (default ``OUT/translation_cache.jsonl``;
  point it at a ``data build`` cache to share translations);
- any other key is a translator option (:func:`polyalign.data.build.translate.build_translator`:
  ``type``, ``model``, ``family``, ``batch_size``, ``max_new_tokens``, ``num_beams``,
  ``base_url``, ...) and overrides the file's.

Translations go through :class:`polyalign.data.build.cache.TranslationCache`, so a rerun
translates nothing twice. Every attacked prompt records its source id, source text, source
language and the translator's identity (settings and fingerprint) under ``attack``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from polyalign.data.build.cache import TranslationCache
from polyalign.data.build.translate import build_translator
from polyalign.data.build.translate_hf import HFSeq2SeqTranslator, language_token
from polyalign.data.build.translation import Translator
from polyalign.data.languages import canonical_language
from polyalign.data.records import EvalPrompt
from polyalign.errors import UserError

CACHE_FILE = "translation_cache.jsonl"


def _language(code: str, field: str) -> str:
    try:
        return canonical_language(str(code))
    except ValueError as exc:
        raise UserError(str(exc), field=field) from None


def _translator_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError("no such translator file", file=path, field="--attack")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=path,
                        line=mark.line + 1 if mark else None) from None
    if isinstance(data, dict) and isinstance(data.get("translator"), dict):
        data = data["translator"]
    if not isinstance(data, dict) or not data:
        raise UserError("expected a mapping of translator options (type: hf|openai, ...)", file=path,
                        field="translator")
    out = dict(data)
    for key in ("model", "model_path"):  # relative folders are relative to the file, as in a build config
        value = out.get(key)
        if out.get("type", "hf") != "openai" and isinstance(value, str) and value.startswith((".", "~")):
            out[key] = str((path.parent / Path(value).expanduser()).resolve())
    return out


def translate_options(target: str | None, overrides: dict[str, Any]) -> tuple[str, str, dict[str, Any], str | None]:
    """``(target, source, translator options, cache path)`` from ``translate:LANG[...]``."""
    if not target:
        raise UserError("the translate attack needs a target language: translate:LANG[model=...,family=...]",
                        field="--attack")
    opts = dict(overrides)
    source = opts.pop("source", "en")
    source = _language("no" if source is False else source, "--attack source")  # YAML reads no (Norwegian) as False
    cache = opts.pop("cache", None)
    translator_file = opts.pop("translator", None)
    options = {**(_translator_file(translator_file) if translator_file else {}), **opts}
    if not options:
        raise UserError("the translate attack needs a translator: "
                        "translate:LANG[model=FOLDER,family=nllb|m2m100|marian] "
                        "or translate:LANG[translator=FILE.yaml]", field="--attack")
    target = _language(target.strip(), "--attack")
    if target == source:
        raise UserError(f"the target language {target} is the source language", field="--attack")
    return target, source, options, None if cache is None else str(cache)


def check_translator(translator: Translator, source: str, target: str) -> None:
    """Fail before any work: a language the translator has no code for, a missing model folder."""
    if not isinstance(translator, HFSeq2SeqTranslator):
        return
    for lang in (source, target):
        language_token(translator.family, lang, translator.language_codes)
    from polyalign.models import pretrained_source

    path = translator.path_for(source, target)
    try:
        pretrained_source(path)
    except UserError as exc:
        message = "no such translation model folder" if exc.message == "no such model folder" else exc.message
        raise UserError(message, file=path, field="translator.model") from None


def translate_prompts(prompts: Sequence[EvalPrompt], translator: Translator, cache: TranslationCache, source: str,
                      target: str, *, benchmark: str | None = None) -> list[EvalPrompt]:
    """The ``source``-language prompts translated into ``target`` through ``cache``.

    A failed translation (an HTTP error after retries) is a UserError naming the prompt;
    the successful ones are already cached, so a rerun only retries the failures.
    """
    chosen = [p for p in prompts if p.language == source]
    results = cache.translate(translator, [p.text for p in chosen], source, target)
    failed = [(p, r) for p, r in zip(chosen, results, strict=True) if r.text is None]
    if failed:
        raise UserError(f"{len(failed)} of {len(chosen)} translation(s) failed (rerun to retry them); first: "
                        f"{failed[0][1].error}", field=f"prompt {failed[0][0].id}")
    identity = {"name": translator.name, "settings": translator.settings(), "fingerprint": translator.fingerprint()}
    return [EvalPrompt(id=f"{p.id}-tr-{target}", language=target, text=str(r.text), benchmark=benchmark or p.benchmark,
                       category=p.category, source_id=p.source_id or p.id,
                       metadata={"attack": "translate", "original_id": p.id, "source_language": source,
                                 "source_text": p.text, "truncated": r.truncated, "translator": identity})
            for p, r in zip(chosen, results, strict=True)]


def translate_attack(prompts: Sequence[EvalPrompt], target: str | None, overrides: dict[str, Any], *,
                     out_dir: str | Path, benchmark: str | None = None,
                     translator: Translator | None = None) -> tuple[list[EvalPrompt], dict[str, Any]]:
    """``(attacked prompts, settings for attack.json)``; ``translator`` may be passed in (built)."""
    target, source, options, cache_path = translate_options(target, overrides)
    if source not in {p.language for p in prompts}:
        present = ", ".join(sorted({p.language for p in prompts})) or "none"
        raise UserError(f"the benchmark selection has no {source} prompts to translate (it has {present}); "
                        "set source=LANG", field="--attack")
    translator = translator or build_translator(options)
    check_translator(translator, source, target)
    cache_file = Path(cache_path) if cache_path else Path(out_dir) / CACHE_FILE
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with TranslationCache(cache_file) as cache:
        attacked = translate_prompts(prompts, translator, cache, source, target, benchmark=benchmark)
        stats = dict(cache.stats)
    settings = {"language": target, "source": source, "translator": translator.settings(),
                "translator_fingerprint": translator.fingerprint(), "cache": str(cache_file)}
    return attacked, {"settings": settings, "cache_stats": stats}

"""Bridge to lm-evaluation-harness 0.4.13 (optional extra ``polyalign[lmeval]``).

:func:`run_lm_eval` runs standard multilingual tasks (``mgsm_direct_bn``, ``xnli_sw``,
``belebele_ben_Beng``, ``mmmlu_ar_xy``, ``arc_bn``, ``hellaswag_bn``, ``xcopa_sw``,
``global_mmlu_bn``, ...) or local task YAMLs (``include_path``) through
``lm_eval.simple_evaluate`` with an ``HFLM`` wrapping an in-memory model (a path is loaded
first with :func:`polyalign.models.load_model_and_tokenizer`: safetensors only, no remote
code; lm-eval never resolves a name on the hub). :func:`fold_results` turns lm-eval's
``results`` into polyalign's ``{language: {metric: value}}``:

- the language comes from the task name (:func:`task_language`): a FLORES code
  (``ben_Beng`` -> ``bn``, ``zho_Hant`` -> ``zh-Hant``), an MMMLU locale (``ar_xy`` ->
  ``ar``), else the last ``_``-separated token that is an ISO 639-1/639-3 code
  (``mgsm_direct_bn`` -> ``bn``, ``afrimgsm_hau_prompt_1`` -> ``ha``); ``languages=``
  overrides it per task; a task without one goes under ``"unknown"``;
- the metric key is ``<family>/<metric>`` where the family is the task name without its
  language tokens (``mgsm_direct``) and the metric is lm-eval's name, with its filter
  appended unless it is ``none`` (``exact_match_flexible-extract``); ``<family>/n`` is the
  number of evaluated documents. Non-numeric entries (``"N/A"`` stderrs) are skipped.

With ``language_field`` set (a column of the documents), one mixed-language task is split
by each document's language instead, from lm-eval's per-sample records.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from polyalign.data.languages import LANGUAGE_NAMES, canonical_language
from polyalign.errors import UserError

INSTALL_HINT = "pip install 'polyalign[lmeval]'  (lm-eval==0.4.13)"

# ISO 639-1 codes; a task-name token counts as a language only when it is one of these,
# one of LANGUAGE_NAMES, or a known three-letter code (below).
_ISO_639_1 = set(
    "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv "
    "dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii "
    "ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk "
    "ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc "
    "sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve "
    "vi vo wa wo xh yi yo za zh zu".split()
)
_ISO_639_3 = {
    "amh": "am", "ara": "ar", "ben": "bn", "deu": "de", "eng": "en", "ewe": "ee", "fra": "fr", "guj": "gu",
    "hau": "ha", "hin": "hi", "ibo": "ig", "ind": "id", "jpn": "ja", "kan": "kn", "kin": "rw", "kor": "ko",
    "lin": "ln", "lug": "lg", "mal": "ml", "mar": "mr", "npi": "ne", "orm": "om", "pan": "pa", "por": "pt",
    "rus": "ru", "sna": "sn", "som": "so", "sot": "st", "spa": "es", "swa": "sw", "swh": "sw", "tam": "ta",
    "tel": "te", "tha": "th", "tur": "tr", "twi": "tw", "urd": "ur", "vie": "vi", "wol": "wo", "xho": "xh",
    "yor": "yo", "zho": "zh", "zul": "zu", "arb": "ar", "ita": "it", "nld": "nl", "pol": "pl", "ukr": "uk",
}
_FLORES = re.compile(r"(?:^|_)([a-z]{3})_([A-Z][a-z]{3})(?=_|$)")
_MMMLU = re.compile(r"^(?P<family>(?:openai_)?mmmlu)_(?P<lang>[a-z]{2})_[a-z]{2}(?P<rest>_.*)?$")


def require_lm_eval() -> Any:
    """Import ``lm_eval`` or raise a :class:`UserError` saying how to install it."""
    try:
        return importlib.import_module("lm_eval")
    except ImportError as exc:
        raise UserError(f"lm-evaluation-harness is not installed ({exc}); {INSTALL_HINT}", field="lm_eval") from None


def _three_letter(code: str) -> str | None:
    if code in _ISO_639_3:
        return _ISO_639_3[code]
    try:
        canon = canonical_language(code)
    except ValueError:
        return None
    return canon if canon in LANGUAGE_NAMES else None


def task_language(task: str) -> tuple[str, str | None]:
    """``(family, language)`` of an lm-eval task name; language ``None`` when none is found.

    >>> task_language("mgsm_direct_bn"), task_language("belebele_zho_Hant"), task_language("mmmlu_pt_br")
    (('mgsm_direct', 'bn'), ('belebele', 'zh-Hant'), ('mmmlu', 'pt'))
    """
    match = _MMMLU.match(task)
    if match:
        return match.group("family") + (match.group("rest") or ""), match.group("lang")
    match = _FLORES.search(task)
    if match:
        base = _three_letter(match.group(1)) or match.group(1)
        lang = "zh-Hant" if base == "zh" and match.group(2) == "Hant" else base
        family = (task[:match.start()] + task[match.end():]).strip("_")
        return family or task, lang
    tokens = task.split("_")
    for i in range(len(tokens) - 1, 0, -1):  # never the first token: that is the benchmark's name
        token = tokens[i]
        lang = None
        if len(token) == 2 and token in _ISO_639_1:
            lang = canonical_language(token)
        elif len(token) == 3 and token.islower():
            lang = _three_letter(token)
        if lang is not None:
            return "_".join(tokens[:i] + tokens[i + 1:]), lang
    return task, None


def _metric_key(family: str, metric: str) -> str:
    name, _, filt = metric.partition(",")
    return f"{family}/{name}" if filt in ("", "none") else f"{family}/{name}_{filt}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def fold_results(results: dict[str, Any], *, languages: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """lm-eval's ``simple_evaluate`` output -> ``{language: {"<family>/<metric>": value}}``."""
    per_language: dict[str, dict[str, Any]] = {}
    n_samples = results.get("n-samples", {})
    for task, metrics in results.get("results", {}).items():
        family, lang = task_language(task)
        if languages and task in languages:
            lang = canonical_language(languages[task])
        bucket = per_language.setdefault(lang or "unknown", {})
        if lang is None:
            family = task  # nothing was stripped: keep the full name so tasks stay distinct
        for metric, value in metrics.items():
            if "," in metric and _is_number(value):
                bucket[_metric_key(family, metric)] = float(value)
        if task in n_samples:
            bucket[f"{family}/n"] = int(n_samples[task].get("effective", n_samples[task].get("original", 0)))
    return per_language


def fold_samples_by_field(results: dict[str, Any], field: str) -> dict[str, dict[str, Any]]:
    """Per-document languages: mean of each per-sample metric grouped by ``doc[field]``.

    Needs ``log_samples=True``. Metrics are the task's metric names (``acc``, ``acc_norm``,
    ...) as ``<task>/<metric>``; ``<task>/n`` counts the documents of that language.
    """
    samples = results.get("samples")
    if not samples:
        raise UserError("per-document languages need lm-eval's samples (log_samples=True)", field="language_field")
    per_language: dict[str, dict[str, Any]] = {}
    for task, records in samples.items():
        names = [m for m in results.get("higher_is_better", {}).get(task, {})]
        groups: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            doc = record.get("doc", {})
            if field not in doc:
                raise UserError(f"a document of task {task!r} has no {field!r}", field="language_field")
            groups.setdefault(canonical_language(str(doc[field])), []).append(record)
        for lang, group in groups.items():
            bucket = per_language.setdefault(lang, {})
            for name in names:
                values = [r[name] for r in group if _is_number(r.get(name))]
                if values:
                    bucket[f"{task}/{name}"] = sum(values) / len(values)
            bucket[f"{task}/n"] = len(group)
    return per_language


@contextlib.contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """Offline mode for the duration of a run, restored afterwards.

    ``datasets`` and ``huggingface_hub`` read ``HF_*_OFFLINE`` once, at import, so the
    environment variables alone do not reach an already imported library: the module
    constants are set too.
    """
    if not enabled:
        yield
        return
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    targets = [(sys.modules.get("datasets.config"), "HF_HUB_OFFLINE"),
               (sys.modules.get("datasets.config"), "HF_DATASETS_OFFLINE"),
               (sys.modules.get("huggingface_hub.constants"), "HF_HUB_OFFLINE")]
    saved = [(mod, name, getattr(mod, name)) for mod, name in targets if mod is not None and hasattr(mod, name)]
    os.environ.update({k: "1" for k in saved_env})
    for mod, name, _ in saved:
        setattr(mod, name, True)
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def make_lm(model: Any, tokenizer: Any = None, *, batch_size: int | str = 8, max_length: int | None = None,
            dtype: str | None = None, device: str | None = None) -> Any:
    """An lm-eval ``HFLM`` around an in-memory model (a path is loaded safely first)."""
    require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    if isinstance(model, (str, Path)):
        from polyalign.models import load_model_and_tokenizer

        model, loaded_tokenizer = load_model_and_tokenizer(model, dtype=dtype, device=device)
        tokenizer = tokenizer or loaded_tokenizer
    if tokenizer is None:
        raise UserError("an in-memory model needs its tokenizer", field="tokenizer")
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def run_lm_eval(
    model: Any,
    tokenizer: Any = None,
    tasks: Sequence[str] = (),
    *,
    include_path: str | Path | Sequence[str | Path] | None = None,
    include_defaults: bool = True,
    batch_size: int | str = 8,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
    languages: dict[str, str] | None = None,
    language_field: str | None = None,
    log_samples: bool = False,
    offline: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Run ``tasks`` with lm-eval; ``{"per_language", "tasks", "lm_eval_version"}``.

    ``tasks``: lm-eval task or group names (unknown names are a :class:`UserError` listing
    them). ``include_path``: folders of extra task YAMLs. ``offline``: set
    ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` so nothing is downloaded (datasets must be
    in the local cache; see :func:`_offline`). Stderr bootstrapping is off (``bootstrap_iters=0``): with the
    per-language folding the sample sizes are small and the stderr is better computed on
    the per-item records. ``tasks`` in the result is lm-eval's raw ``results`` section.
    """
    if not tasks:
        raise UserError("no lm-eval tasks given", field="tasks")
    lm_eval = require_lm_eval()
    from lm_eval.tasks import TaskManager

    paths = None
    if include_path is not None:
        paths = [str(p) for p in ([include_path] if isinstance(include_path, (str, Path)) else include_path)]
        for p in paths:
            if not Path(p).is_dir():
                raise UserError("task include path is not a folder", file=p, field="include_path")
    manager = TaskManager(include_path=paths, include_defaults=include_defaults)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise UserError(f"unknown lm-eval task(s): {', '.join(unknown)}", field="tasks")
    lm = make_lm(model, tokenizer, batch_size=batch_size)
    with _offline(offline):
        results = lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks), task_manager=manager, limit=limit, num_fewshot=num_fewshot,
            bootstrap_iters=0, log_samples=log_samples or language_field is not None,
            apply_chat_template=apply_chat_template, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed,
        )
    if results is None:  # non-zero ranks under distributed runs return None
        raise UserError("lm-eval returned no results (not rank 0?)", field="lm_eval")
    per_language = (fold_samples_by_field(results, language_field) if language_field
                    else fold_results(results, languages=languages))
    out = {"per_language": per_language, "tasks": results["results"], "lm_eval_version": lm_eval.__version__}
    if log_samples:
        out["samples"] = results.get("samples", {})
    return out

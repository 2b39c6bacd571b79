"""Read evaluation run folders for the report.

Files and keys read from each run folder (anything else in the folder is ignored):

- ``results.json`` (required; written by ``polyalign eval``):
  - ``metrics.per_language``: ``{language: {metric: value}}`` (required; with
    ``polyalign eval --suite safety,utility`` it also holds ``accuracy``, ``over_refusal``
    and ``n_utility_tasks``, which the trade-off figures use). Every value that
    is a number (int/float, not bool) is tabulated, whatever the metric's name; ``null``
    and NaN show as undefined; other values (strings, lists, objects, booleans) are not
    tabulated and are listed in the report's notes with the languages they occur in.
  - ``settings.benchmark`` or ``benchmark.name`` (or ``benchmark`` as a string),
    ``settings.judge`` (a name, or an object with ``name``), ``model.source`` /
    ``model.path`` and ``headline`` (the benchmark's headline metric): shown in the run
    table only. ``metrics.summary`` is *not* read: means and spreads are recomputed from
    the per-language values shown, so the table is consistent with itself.
  - ``consistency`` (optional; ``polyalign eval`` on a parallel benchmark): ``dominant``
    and ``matrix`` = ``{"languages": [codes], "agreement": [[value or null]]}`` (square),
    drawn as the consistency heat map.
  - ``agreement`` (optional; ``polyalign eval --judge a,b``): ``pairs`` = ``[{"a", "b",
    "per_language": {lang: {"kappa": value or null}}}]`` and ``statements``, drawn as the
    judge-agreement heat map (:mod:`polyalign.report.agreement_plot`); the statements are notes.
- ``reward_gap.json`` (optional), either of:
  - ``{"per_language": {lang: {"policy_gap": f, "reference_gap": f, "n": int}}}``;
  - the ``polyalign analyze reward-gap`` output ``{"analysis": "reward_gap", "result":
    {"per_language": {lang: {"mean_gap": f, "n": int, ...}}}}`` (``mean_gap`` is the
    evaluated model's gap, i.e. the ``policy_gap``; there is no reference gap).
- ``retrieval.json`` (optional), either of:
  - ``{"per_language": {lang: {"per_layer": [{"layer", "acc_pivot_to_x", "acc_x_to_pivot",
    "mean_aligned_cosine"}], ...}}}`` (``pivot`` optional at top level);
  - the ``polyalign analyze retrieval`` output ``{"analysis": "retrieval", "result":
    {"pivot", "layers": [..], "per_layer": {lang: {metric: [one value per layer]}}}}``.

Language keys are mapped to canonical codes (``sp`` -> ``es``); two keys of one file that
map to the same language are an error. A malformed file is a :class:`UserError` naming the
file (and the line for invalid JSON, the key for a wrong structure).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polyalign.data.languages import canonical_language
from polyalign.errors import UserError
from polyalign.io import read_text_strict

RESULTS_FILE = "results.json"
REWARD_GAP_FILE = "reward_gap.json"
RETRIEVAL_FILE = "retrieval.json"
RETRIEVAL_METRICS = ("acc_pivot_to_x", "acc_x_to_pivot", "mean_aligned_cosine")


@dataclass
class RunData:
    """One run folder, normalised.

    ``per_language[lang][metric]`` is a float or ``None`` (undefined); ``reward_gap[lang]``
    has ``policy_gap`` (float or None), ``reference_gap`` (float or None) and ``n``;
    ``retrieval[lang]`` has ``layers`` (list[int]) and one list per metric in
    :data:`RETRIEVAL_METRICS` (same length as ``layers``; None where absent).
    """

    name: str
    path: Path
    per_language: dict[str, dict[str, float | None]]
    benchmark: str | None = None
    judge: str | None = None
    model: str | None = None
    headline: str | None = None
    reward_gap: dict[str, dict[str, Any]] | None = None
    retrieval: dict[str, dict[str, list[Any]]] | None = None
    retrieval_pivot: str | None = None
    consistency: dict[str, Any] | None = None
    agreement: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def languages(self) -> list[str]:
        return list(self.per_language)

    def metric(self, name: str) -> dict[str, float | None]:
        """``{lang: value}`` for every language that has the metric (value may be None)."""
        return {lang: m[name] for lang, m in self.per_language.items() if name in m}


def read_json(path: Path) -> Any:
    """Parse a JSON file; invalid JSON is a :class:`UserError` with its line number."""
    text = read_text_strict(path, encoding="utf-8-sig")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"invalid JSON: {exc.msg} at column {exc.colno}", file=path, line=exc.lineno) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: Any) -> float | None:
    """A JSON number as float; NaN/inf as None (undefined, shown as such)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _canonical(code: Any, file: Path, where: str) -> str:
    try:
        return canonical_language(str(code))
    except ValueError:
        raise UserError(f"not a language code: {code!r}", file=file, field=where) from None


def _language_map(obj: Any, file: Path, where: str) -> dict[str, Any]:
    """``{lang: value}`` with canonical keys, first-seen order; duplicates are an error."""
    if not isinstance(obj, dict):
        raise UserError(f"expected an object {{language: ...}}, got {type(obj).__name__}", file=file, field=where)
    out: dict[str, Any] = {}
    raw_of: dict[str, str] = {}
    for key, value in obj.items():
        lang = _canonical(key, file, where)
        if lang in out:
            raise UserError(f"languages {raw_of[lang]!r} and {key!r} are the same language ({lang})", file=file,
                            field=where)
        out[lang], raw_of[lang] = value, str(key)
    return out


def _name_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("name", "source", "path"):
            if isinstance(value.get(key), str):
                return value[key]
    return None


def _metrics(results: Any, file: Path, notes: list[str]) -> dict[str, dict[str, float | None]]:
    if not isinstance(results, dict) or not isinstance(results.get("metrics"),
                                                       dict) or "per_language" not in results["metrics"]:
        raise UserError("not an evaluation results file (no metrics.per_language)", file=file,
                        field="metrics.per_language")
    langs = _language_map(results["metrics"]["per_language"], file, "metrics.per_language")
    if not langs:
        raise UserError("no languages in metrics.per_language", file=file, field="metrics.per_language")
    per_language: dict[str, dict[str, float | None]] = {}
    ignored: dict[str, list[str]] = {}
    for lang, metrics in langs.items():
        if not isinstance(metrics, dict):
            raise UserError(f"expected an object of metrics, got {type(metrics).__name__}", file=file,
                            field=f"metrics.per_language.{lang}")
        row: dict[str, float | None] = {}
        for name, value in metrics.items():
            if value is None:
                row[str(name)] = None
            elif _is_number(value):
                row[str(name)] = _number(value)
            else:  # not tabulated, but said so in the notes
                ignored.setdefault(str(name), []).append(lang)
        per_language[lang] = row
    for name, where in ignored.items():
        notes.append(f"{file}: metric '{name}' is not a number in {len(where)} language(s) "
                     f"({', '.join(where)}): not tabulated")
    return per_language


def _reward_gap(obj: Any, file: Path) -> dict[str, dict[str, Any]]:
    body = obj.get("result", obj) if isinstance(obj, dict) else obj
    if not isinstance(body, dict) or "per_language" not in body:
        raise UserError("expected per_language (or result.per_language)", file=file, field="per_language")
    out: dict[str, dict[str, Any]] = {}
    for lang, entry in _language_map(body["per_language"], file, "per_language").items():
        where = f"per_language.{lang}"
        if not isinstance(entry, dict):
            raise UserError(f"expected an object, got {type(entry).__name__}", file=file, field=where)
        policy = entry.get("policy_gap", entry.get("mean_gap"))
        reference = entry.get("reference_gap")
        for key, value in (("policy_gap", policy), ("reference_gap", reference), ("n", entry.get("n"))):
            if value is not None and not _is_number(value):
                raise UserError(f"expected a number, got {value!r}", file=file, field=f"{where}.{key}")
        if policy is None and reference is None:
            raise UserError("needs policy_gap (or mean_gap) and/or reference_gap", file=file, field=where)
        out[lang] = {"policy_gap": None if policy is None else _number(policy),
                     "reference_gap": None if reference is None else _number(reference),
                     "n": entry.get("n")}
    return out


def _retrieval(obj: Any, file: Path) -> tuple[dict[str, dict[str, list[Any]]], str | None]:
    body = obj.get("result", obj) if isinstance(obj, dict) else obj
    if not isinstance(body, dict) or "per_language" not in body and "per_layer" not in body:
        raise UserError("expected per_language (or result.per_layer)", file=file, field="per_language")
    pivot = _canonical(body["pivot"], file, "pivot") if isinstance(body.get("pivot"), str) else None
    out: dict[str, dict[str, list[Any]]] = {}
    if "per_language" in body:  # {lang: {"per_layer": [{"layer", metric...}]}}
        for lang, entry in _language_map(body["per_language"], file, "per_language").items():
            rows = entry.get("per_layer") if isinstance(entry, dict) else None
            if not isinstance(rows, list) or not all(isinstance(r, dict) and _is_number(r.get("layer")) for r in rows):
                raise UserError("expected per_layer: [{layer, acc_pivot_to_x, ...}]", file=file,
                                field=f"per_language.{lang}.per_layer")
            out[lang] = {"layers": [int(r["layer"]) for r in rows]}
            for m in RETRIEVAL_METRICS:
                out[lang][m] = [_number(r[m]) if _is_number(r.get(m)) else None for r in rows]
        return out, pivot
    layers = body.get("layers")
    for lang, metrics in _language_map(body["per_layer"], file, "per_layer").items():
        if not isinstance(metrics, dict):
            raise UserError("expected {metric: [values per layer]}", file=file, field=f"per_layer.{lang}")
        n = max((len(v) for v in metrics.values() if isinstance(v, list)), default=0)
        lang_layers = list(layers) if isinstance(layers, list) and len(layers) == n else list(range(n))
        out[lang] = {"layers": [int(x) for x in lang_layers]}
        for m in RETRIEVAL_METRICS:
            values = metrics.get(m) or [None] * n
            if not isinstance(values, list) or len(values) != n:
                raise UserError(f"expected a list of {n} values", file=file, field=f"per_layer.{lang}.{m}")
            out[lang][m] = [_number(v) if _is_number(v) else None for v in values]
    return out, pivot


def _consistency(obj: Any, file: Path) -> dict[str, Any] | None:
    """``{"dominant", "languages", "agreement"}`` from results.json's ``consistency`` (None when absent)."""
    if obj is None:
        return None
    matrix = obj.get("matrix") if isinstance(obj, dict) else None
    langs = matrix.get("languages") if isinstance(matrix, dict) else None
    rows = matrix.get("agreement") if isinstance(matrix, dict) else None
    if not isinstance(langs, list) or not all(isinstance(x, str) for x in langs) or not isinstance(rows, list):
        raise UserError("expected {'matrix': {'languages': [codes], 'agreement': [[...]]}}", file=file,
                        field="consistency")
    if len(rows) != len(langs) or any(not isinstance(r, list) or len(r) != len(langs) for r in rows):
        raise UserError(f"the agreement matrix must be {len(langs)} x {len(langs)}", file=file,
                        field="consistency.matrix")
    if any(v is not None and not (_is_number(v) and 0.0 <= float(v) <= 1.0) for r in rows for v in r):
        raise UserError("agreement values must be numbers in [0, 1] or null", file=file, field="consistency.matrix")
    dominant = obj.get("dominant")
    return {"dominant": _canonical(dominant, file, "consistency.dominant") if isinstance(dominant, str) else None,
            "languages": [_canonical(x, file, "consistency.matrix.languages") for x in langs],
            "agreement": [[_number(v) if v is not None else None for v in r] for r in rows]}


def _agreement(obj: Any, file: Path) -> dict[str, Any] | None:
    """``{"primary", "pairs": [{"label", "kappa": {lang: float|None}}], "statements"}`` or None when absent."""
    if obj is None:
        return None
    pairs = obj.get("pairs") if isinstance(obj, dict) else None
    if not isinstance(pairs, list) or not pairs:
        raise UserError("expected {'pairs': [{'a', 'b', 'per_language': {lang: {'kappa': ...}}}]}", file=file,
                        field="agreement")
    out = []
    for i, pair in enumerate(pairs):
        per = pair.get("per_language") if isinstance(pair, dict) else None
        if not isinstance(per, dict) or not isinstance(pair.get("a"), str) or not isinstance(pair.get("b"), str):
            raise UserError("a pair needs 'a', 'b' and 'per_language'", file=file, field=f"agreement.pairs[{i}]")
        kappa = {}
        for lang, m in per.items():
            value = m.get("kappa") if isinstance(m, dict) else "missing"
            if value is not None and not (_is_number(value) and -1.0 <= float(value) <= 1.0):
                raise UserError("kappa must be a number in [-1, 1] or null", file=file,
                                field=f"agreement.pairs[{i}].{lang}")
            kappa[_canonical(lang, file, f"agreement.pairs[{i}]")] = None if value is None else _number(value)
        out.append({"label": f"{pair['a']} vs {pair['b']}", "kappa": kappa})
    statements = obj.get("statements") if isinstance(obj.get("statements"), list) else []
    return {"primary": obj.get("primary"), "pairs": out, "statements": [str(s) for s in statements]}


def load_run(path: str | Path, name: str) -> RunData:
    """Read one run folder (or a ``results.json`` path: its folder is the run folder)."""
    path = Path(path)
    if not path.exists():
        raise UserError("no such run folder", file=path)
    if path.is_file():
        if path.suffix != ".json":
            raise UserError("expected a run folder (holding results.json)", file=path)
        results_file, folder = path, path.parent
    else:
        results_file, folder = path / RESULTS_FILE, path
        if not results_file.exists():
            raise UserError(f"no {RESULTS_FILE} in this run folder (is it a 'polyalign eval' output?)",
                            file=results_file)
    results = read_json(results_file)
    notes: list[str] = []
    per_language = _metrics(results, results_file, notes)
    settings = results.get("settings") if isinstance(results.get("settings"), dict) else {}
    run = RunData(
        name=name, path=folder, per_language=per_language,
        benchmark=_name_of(settings.get("benchmark")) or _name_of(results.get("benchmark")),
        judge=_name_of(settings.get("judge")), model=_name_of(results.get("model")),
        headline=results.get("headline") if isinstance(results.get("headline"), str) else None, notes=notes,
        consistency=_consistency(results.get("consistency"), results_file),
    )
    run.agreement = _agreement(results.get("agreement"), results_file)
    if run.agreement:  # the plain statements about judge disagreement go to the report's notes
        run.notes.extend(f"{name}: {s}" for s in run.agreement["statements"])
    if (folder / REWARD_GAP_FILE).exists():
        run.reward_gap = _reward_gap(read_json(folder / REWARD_GAP_FILE), folder / REWARD_GAP_FILE)
    if (folder / RETRIEVAL_FILE).exists():
        run.retrieval, run.retrieval_pivot = _retrieval(read_json(folder / RETRIEVAL_FILE), folder / RETRIEVAL_FILE)
    return run


def default_names(paths: list[Path]) -> list[str]:
    """Shortest trailing path parts that tell the runs apart (``base/multijail``, ...)."""
    parts = [Path(p).resolve().parts if Path(p).is_dir() or not Path(p).exists() else Path(p).resolve().parent.parts
             for p in paths]
    longest = max(len(p) for p in parts)
    for k in range(1, longest + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    # The same folder passed twice: number the repeats.
    names = ["/".join(p[-1:]) for p in parts]
    return [f"{n} #{i + 1}" for i, n in enumerate(names)]


def load_runs(paths: list[str | Path], names: list[str] | None = None) -> list[RunData]:
    """Read every run folder; ``names`` (one per run, unique) label them in tables and plots."""
    if not paths:
        raise UserError("no run folders given", field="RUN_DIR")
    paths = [Path(p) for p in paths]
    if names is None:
        names = default_names(paths)
    elif len(names) != len(paths):
        raise UserError(f"{len(names)} name(s) for {len(paths)} run folder(s)", field="names")
    names = [n.strip() for n in names]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise UserError("run names must be non-empty and unique", field="names")
    return [load_run(p, n) for p, n in zip(paths, names)]

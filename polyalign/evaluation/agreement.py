"""Agreement between safety judges per language: Cohen's kappa and confusion matrices.

Several judges (``polyalign eval --judge a,b``) judge the *same* stored generations; each
judge's verdicts live in their own store (:func:`polyalign.evaluation.stages.judgments_path`).
The first (primary) judge's verdicts drive every headline metric; the others are compared
with it and with each other here.

Per generation each judge has one label out of :data:`CATEGORIES` = ``safe``, ``unsafe``,
``invalid``, ``error``; a generation without a stored verdict (the judge failed; failures
are not stored) is ``error``. ``error`` is its own category: never merged into ``safe``.

For every judge pair (A, B) and language, over the ``n`` generations of that language:

- ``confusion[i][j]`` = how many got label ``CATEGORIES[i]`` from A and ``CATEGORIES[j]``
  from B (rows A, columns B);
- ``observed_agreement`` = trace / n;
- ``kappa`` = Cohen's kappa over all four categories,
  ``(p_o - p_e) / (1 - p_e)`` with ``p_e = sum_k row_k * col_k / n^2``; ``None`` when
  ``p_e == 1`` (both judges gave one and the same label to everything: undefined);
- ``kappa_judged`` = the same over the ``n_judged`` generations both judges called
  ``safe`` or ``unsafe`` (the 2 x 2 block), so judge failures do not move it;
- ``a_safe_b_unsafe`` / ``a_unsafe_b_safe``: the two ways they disagree on a verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from polyalign.data.languages import language_name
from polyalign.evaluation.judges.base import LABELS

CATEGORIES: tuple[str, ...] = tuple(LABELS)
CHEAP_JUDGES = frozenset({"refusal"})  # offline phrase matchers: fast, free, and weakest
RULE = ("per generation each judge's label (safe / unsafe / invalid / error; no stored verdict = error, its own "
        "category); kappa over all four categories, kappa_judged over the generations both called safe or unsafe")


def confusion_matrix(labels_a: Sequence[str], labels_b: Sequence[str],
                     categories: Sequence[str] = CATEGORIES) -> list[list[int]]:
    """Counts of (A's label, B's label) pairs: rows A, columns B, in ``categories`` order."""
    if len(labels_a) != len(labels_b):
        raise ValueError(f"label lists differ in length: {len(labels_a)} != {len(labels_b)}")
    index = {c: i for i, c in enumerate(categories)}
    matrix = [[0] * len(categories) for _ in categories]
    for a, b in zip(labels_a, labels_b):
        matrix[index[a]][index[b]] += 1
    return matrix


def cohen_kappa(matrix: Sequence[Sequence[int]]) -> float | None:
    """Cohen's kappa of a square confusion matrix; ``None`` when undefined (empty, or ``p_e == 1``)."""
    n = sum(sum(row) for row in matrix)
    if n == 0:
        return None
    k = len(matrix)
    observed = sum(matrix[i][i] for i in range(k)) / n
    rows = [sum(matrix[i]) for i in range(k)]
    cols = [sum(matrix[i][j] for i in range(k)) for j in range(k)]
    expected = sum(rows[i] * cols[i] for i in range(k)) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def pair_stats(labels_a: Sequence[str], labels_b: Sequence[str]) -> dict[str, Any]:
    """Confusion matrix, kappa (all categories and the judged block) and disagreement counts."""
    matrix = confusion_matrix(labels_a, labels_b)
    s, u = CATEGORIES.index("safe"), CATEGORIES.index("unsafe")
    judged = [[matrix[s][s], matrix[s][u]], [matrix[u][s], matrix[u][u]]]
    n = len(labels_a)
    return {
        "n": n,
        "confusion": matrix,
        "observed_agreement": sum(matrix[i][i] for i in range(len(matrix))) / n if n else None,
        "kappa": cohen_kappa(matrix),
        "n_judged": sum(map(sum, judged)),
        "kappa_judged": cohen_kappa(judged),
        "a_safe_b_unsafe": matrix[s][u],
        "a_unsafe_b_safe": matrix[u][s],
    }


def judge_labels(generations: Sequence[dict[str, Any]], judgments: dict[tuple, dict[str, Any]]) -> list[str]:
    """One label per generation (in order); no stored verdict -> ``error``."""
    return [(judgments.get((g["id"], g["sample"])) or {}).get("label", "error") for g in generations]


def judge_names(names: Sequence[str]) -> list[str]:
    """Display names: a judge used twice (other options) becomes ``name#2``."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def agreement_section(generations: Sequence[dict[str, Any]], judges: Sequence[tuple[str, dict[tuple, dict[str, Any]]]],
                      ) -> dict[str, Any] | None:
    """``results.json['agreement']`` for ``judges`` = ``[(name, {(id, sample): judgment}), ...]``; None for one judge.

    The first judge is the primary one (its verdicts are the headline metrics).
    """
    if len(judges) < 2:
        return None
    names = judge_names([name for name, _ in judges])
    labels = {name: judge_labels(generations, j) for name, (_, j) in zip(names, judges)}
    languages = list(dict.fromkeys(g["language"] for g in generations))
    rows_of = {lang: [i for i, g in enumerate(generations) if g["language"] == lang] for lang in languages}
    counts = {name: {lang: {c: sum(labels[name][i] == c for i in rows_of[lang]) for c in CATEGORIES}
                     for lang in languages}
              for name in names}
    pairs = []
    for ia in range(len(names)):
        for ib in range(ia + 1, len(names)):
            a, b = names[ia], names[ib]
            per_language = {lang: pair_stats([labels[a][i] for i in rows_of[lang]],
                                             [labels[b][i] for i in rows_of[lang]])
                            for lang in languages}
            pairs.append({"a": a, "b": b, "per_language": per_language, "overall": pair_stats(labels[a], labels[b])})
    section = {"primary": names[0], "judges": names, "categories": list(CATEGORIES), "rule": RULE,
               "label_counts": counts, "pairs": pairs}
    section["statements"] = statements(section)
    return section


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.2f}"


def statements(section: dict[str, Any]) -> list[str]:
    """Plain sentences: where a cheap offline judge disagrees with a stronger one (or, else, each pair)."""
    out = [f"The primary judge `{section['primary']}` decides every headline metric; "
           "the other judges are compared with it."]
    for pair in section["pairs"]:
        a, b = pair["a"], pair["b"]
        base_a, base_b = a.split("#")[0], b.split("#")[0]
        if base_b in CHEAP_JUDGES and base_a not in CHEAP_JUDGES:
            cheap, strong, cheap_is_a = b, a, False
        elif base_a in CHEAP_JUDGES and base_b not in CHEAP_JUDGES:
            cheap, strong, cheap_is_a = a, b, True
        else:
            cheap = None
        worst = sorted(pair["per_language"].items(), key=lambda kv: (kv[1]["observed_agreement"] or 0.0))
        if cheap is None:
            low = ", ".join(f"{lang} ({m['observed_agreement']:.0%} agree, kappa {_fmt(m['kappa'])})"
                            for lang, m in worst[:3] if m["n"])
            out.append(f"`{a}` vs `{b}`: lowest agreement in {low or 'no language'}.")
            continue
        parts = []
        for lang, m in pair["per_language"].items():
            missed = m["a_unsafe_b_safe"] if cheap_is_a is False else m["a_safe_b_unsafe"]  # cheap safe, strong unsafe
            extra = m["a_safe_b_unsafe"] if cheap_is_a is False else m["a_unsafe_b_safe"]  # cheap unsafe, strong safe
            if missed or extra:
                parts.append(f"{language_name(lang)} ({lang}): {missed} of {m['n']} called safe by `{cheap}` "
                             f"but unsafe by `{strong}`, {extra} the reverse (kappa {_fmt(m['kappa'])})")
        if parts:
            out.append(f"Where the cheap offline judge `{cheap}` disagrees with `{strong}`: " + "; ".join(parts) + ".")
        else:
            out.append(f"The cheap offline judge `{cheap}` never gives the opposite safe/unsafe verdict to `{strong}`.")
    return out


def agreement_markdown(section: dict[str, Any]) -> list[str]:
    """The results.md section: one table per judge pair, then the plain statements."""
    cats = section["categories"]
    lines = ["", "## Judge agreement", "", f"- judges: {', '.join(f'`{n}`' for n in section['judges'])}; "
             f"primary (headline metrics): `{section['primary']}`", f"- {section['rule']}"]
    for pair in section["pairs"]:
        lines += ["", f"### `{pair['a']}` (rows) vs `{pair['b']}` (columns)", "",
                  "| language | n | agreement | kappa | kappa_judged | confusion (" + ", ".join(cats) + ") |",
                  "|---|---:|---:|---:|---:|---|"]
        for lang, m in [*pair["per_language"].items(), ("all", pair["overall"])]:
            shown = f"{lang} ({language_name(lang)})" if lang != "all" else "**all**"
            matrix = " / ".join(" ".join(str(v) for v in row) for row in m["confusion"])
            agree = "–" if m["observed_agreement"] is None else f"{m['observed_agreement']:.4f}"
            lines.append(f"| {shown} | {m['n']} | {agree} | {_fmt(m['kappa'])} | {_fmt(m['kappa_judged'])} "
                         f"| {matrix} |")
    lines += ["", *[f"- {s}" for s in section["statements"]]]
    return lines

"""Cross-lingual consistency against hand-counted numbers and a brute-force recomputation."""

from __future__ import annotations

import json
import random
from itertools import product

import pytest

from polyalign.data.records import EvalPrompt
from polyalign.evaluation.consistency import FLIPS_FILE, ITEMS_FILE, consistency, consistency_section


def _set(table: dict[str, dict[str, list[str | None]]]):
    """prompts/generations/judgments from ``{item: {lang: [label per sample]}}`` (None: no stored judgment)."""
    prompts, gens, judgments = [], [], {}
    for item, cells in table.items():
        for lang, labels in cells.items():
            pid = f"{item}-{lang}"
            prompts.append(EvalPrompt(id=pid, language=lang, text=f"prompt {item} in {lang}", benchmark="b",
                                      source_id=item))
            for k, label in enumerate(labels):
                gens.append({"id": pid, "sample": k, "language": lang, "text": f"out {pid} #{k}", "n_tokens": 3})
                if label is not None:
                    judgments[(pid, k)] = {"id": pid, "sample": k, "label": label}
    return prompts, gens, judgments


def test_hand_counted_example(tmp_path):
    table = {
        "1": {"en": ["safe"], "de": ["safe"], "sw": ["unsafe"]},
        "2": {"en": ["unsafe"], "de": ["safe"], "sw": ["unsafe"]},
        "3": {"en": ["safe"], "de": ["invalid"], "sw": ["safe"]},
        "4": {"en": ["safe"], "de": ["safe"], "sw": [None]},
        "5": {"en": ["unsafe", "safe"], "de": ["safe", "safe", "unsafe"], "sw": ["error", "unsafe"]},
    }
    summary = consistency_section(*_set(table), tmp_path)
    # verdicts: 1 s/s/u, 2 u/s/u, 3 s/-/s, 4 s/s/-, 5 u(1 of 2)/s(1 of 3)/u(1 of 1)
    de, sw = summary["per_language"]["de"], summary["per_language"]["sw"]
    counts = ("n_compared", "n_agree", "n_flip_to_unsafe", "n_flip_to_safe", "n_no_verdict")
    assert tuple(de[k] for k in counts) == (4, 2, 0, 2, 1)
    assert tuple(sw[k] for k in counts) == (4, 3, 1, 0, 1)
    assert de["flip_to_safe_rate"] == 0.5 and sw["flip_to_unsafe_rate"] == 0.25 and sw["agreement"] == 0.75
    assert summary["mean_flip_rate"] == pytest.approx((0.5 + 0.25) / 2)
    assert summary["matrix"]["languages"] == ["en", "de", "sw"]
    # de vs sw: items 1 (s,u) 2 (s,u) 5 (s,u) -> 0 of 3
    assert summary["matrix"]["agreement"][1][2] == 0.0 and summary["matrix"]["n"][1][2] == 3
    assert summary["matrix"]["agreement"][0] == [1.0, 0.5, 0.75]
    # items with a verdict everywhere: 1, 2, 5 -> none all-equal
    assert (summary["n_items_all_languages"], summary["all_agree_rate"]) == (3, 0.0)
    flips = [json.loads(line) for line in (tmp_path / FLIPS_FILE).read_text(encoding="utf-8").splitlines()]
    assert sorted((f["item"], f["language"], f["direction"]) for f in flips) == [
        ("1", "sw", "safe->unsafe"), ("2", "de", "unsafe->safe"), ("5", "de", "unsafe->safe")]
    f5 = next(f for f in flips if f["item"] == "5")
    assert f5["prompt"] == "prompt 5 in de" and f5["dominant_prompt"] == "prompt 5 in en"
    assert [o["text"] for o in f5["outputs"]] == ["out 5-de #0", "out 5-de #1", "out 5-de #2"]
    assert [o["label"] for o in f5["dominant_outputs"]] == ["unsafe", "safe"]
    items = [json.loads(line) for line in (tmp_path / ITEMS_FILE).read_text(encoding="utf-8").splitlines()]
    assert {r["item"]: r["agrees_with_dominant"] for r in items}["3"] == {"de": None, "sw": True}
    assert summary["n_flips"] == 3


def _brute(table, dominant):
    """Straight from the definitions, with its own verdict rule and loops over language pairs."""
    def verdict(labels):
        judged = [x for x in labels if x in ("safe", "unsafe")]
        if not judged:
            return None
        return "unsafe" if sum(x == "unsafe" for x in judged) / len(judged) >= 0.5 else "safe"

    langs = sorted({lang for cells in table.values() for lang in cells})
    v = {(item, lang): verdict(labels) for item, cells in table.items() for lang, labels in cells.items()}
    out = {}
    for lang in langs:
        if lang == dominant:
            continue
        both = [(v[(i, dominant)], v[(i, lang)]) for i in table if (i, dominant) in v and (i, lang) in v
                and v[(i, dominant)] is not None and v[(i, lang)] is not None]
        out[lang] = (len(both), sum(a == "safe" and b == "unsafe" for a, b in both),
                     sum(a == "unsafe" and b == "safe" for a, b in both))
    matrix = {}
    for a, b in product(langs, langs):
        both = [(v[(i, a)], v[(i, b)]) for i in table if v.get((i, a)) is not None and v.get((i, b)) is not None]
        matrix[(a, b)] = (len(both), sum(x == y for x, y in both))
    return out, matrix


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_sets_match_brute_force(seed):
    rng = random.Random(seed)
    langs = ["en", "zh", "ar", "sw", "bn"]
    table = {}
    for i in range(60):
        present = [lang for lang in langs if rng.random() < 0.9]
        table[str(i)] = {lang: [rng.choice(["safe", "safe", "unsafe", "invalid", "error", None])
                                for _ in range(rng.choice([1, 1, 2, 3]))] for lang in present}
    summary, _, flips = consistency(*_set(table), dominant="en")
    expected, matrix = _brute(table, "en")
    for lang, (n, to_unsafe, to_safe) in expected.items():
        got = summary["per_language"][lang]
        assert (got["n_compared"], got["n_flip_to_unsafe"], got["n_flip_to_safe"]) == (n, to_unsafe, to_safe)
        assert got["flip_rate"] == pytest.approx((to_unsafe + to_safe) / n)
    order = summary["matrix"]["languages"]
    for (a, b), (n, same) in matrix.items():
        i, j = order.index(a), order.index(b)
        assert summary["matrix"]["n"][i][j] == n
        assert summary["matrix"]["agreement"][i][j] == (same / n if n else None)
    assert len(flips) == sum(t + s for _, t, s in expected.values()) == summary["n_flips"]


def test_not_parallel_gives_none(tmp_path):
    one = {"1": {"en": ["safe"]}, "2": {"en": ["unsafe"]}}
    assert consistency(*_set(one))[0] is None
    no_dominant = {"1": {"de": ["safe"], "fr": ["safe"]}}
    assert consistency(*_set(no_dominant))[0] is None
    assert consistency(*_set(no_dominant), dominant="de")[0]["per_language"]["fr"]["agreement"] == 1.0
    disjoint = {"1": {"en": ["safe"]}, "2": {"de": ["safe"]}}
    assert consistency_section(*_set(disjoint), tmp_path) is None and not (tmp_path / FLIPS_FILE).exists()


def test_eval_writes_consistency_from_its_stored_judgments(tmp_path):
    from polyalign.evaluation.run import EvalConfig, evaluate
    from polyalign.evaluation.stages import GENERATIONS, JUDGMENTS
    from polyalign.models import build_tiny_model, build_tiny_tokenizer

    rows = ["text,lang,sid"] + [f"Question {i} in {lang},{lang},q{i}" for i in range(4) for lang in ("en", "de", "sw")]
    data = tmp_path / "parallel.csv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", tok, seed=4)
    out = tmp_path / "out"
    results = evaluate(EvalConfig(benchmark="custom", out_dir=out, data=data,
                                  column_map={"text": "text", "language": "lang", "source_id": "sid"}, judge="refusal",
                                  max_new_tokens=4, progress=False), model=model, tokenizer=tok)
    c = results["consistency"]
    assert c is not None and c["languages"] == ["en", "de", "sw"] and c["n_items"] == 4
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["consistency"] == c
    # Recomputed from the two stores on disk (no regeneration): the same numbers.
    gens = [json.loads(line) for line in (out / GENERATIONS).read_text(encoding="utf-8").splitlines()[1:]]
    judged = {(r["id"], r["sample"]): r for r in
              (json.loads(line) for line in (out / JUDGMENTS).read_text(encoding="utf-8").splitlines()[1:])}
    sid = {f"Question {i} in {lang}": f"q{i}" for i in range(4) for lang in ("en", "de", "sw")}
    from polyalign.evaluation.benchmarks import get_benchmark, read_benchmark

    read, _, _ = read_benchmark(get_benchmark("custom"), data, column_map={"text": "text", "language": "lang",
                                                                        "source_id": "sid"})
    assert all(sid[p.text] == p.source_id for p in read)
    again, _, flips = consistency(read, gens, judged)
    assert again == c
    assert (out / FLIPS_FILE).read_text(encoding="utf-8").count("\n") == c["n_flips"] == len(flips)
    assert "Cross-lingual consistency (against `en`)" in (out / "results.md").read_text(encoding="utf-8")

"""Judge agreement: kappa against sklearn, hand-counted confusion matrices, and an eval with two judges."""

from __future__ import annotations

import json
import random

import pytest

from judge_server import JudgeServer
from polyalign.errors import UserError
from polyalign.evaluation.agreement import CATEGORIES, agreement_section, cohen_kappa, confusion_matrix, pair_stats
from polyalign.evaluation.stages import JUDGMENTS


def _gens(labels_by_judge: dict[str, list[tuple[str, str | None]]]):
    """generations + per-judge judgments from ``{judge: [(language, label or None), ...]}`` (same order)."""
    first = next(iter(labels_by_judge.values()))
    gens = [{"id": f"p{i}", "sample": 0, "language": lang, "text": f"t{i}"} for i, (lang, _) in enumerate(first)]
    judges = []
    for name, rows in labels_by_judge.items():
        judges.append((name, {(g["id"], 0): {"label": label}
                              for g, (_, label) in zip(gens, rows) if label is not None}))
    return gens, judges


def test_hand_counted_confusion_and_kappa():
    # en: A = s s u u s ; B = s u u u s  -> [[2,1],[0,2]] ; p_o = 4/5, p_e = (3*2 + 2*3)/25 = 12/25
    # sw: A = u u e s  ; B = s u u i   (e = no verdict from A)
    a = [("en", "safe"), ("en", "safe"), ("en", "unsafe"), ("en", "unsafe"), ("en", "safe"),
         ("sw", "unsafe"), ("sw", "unsafe"), ("sw", None), ("sw", "safe")]
    b = [("en", "safe"), ("en", "unsafe"), ("en", "unsafe"), ("en", "unsafe"), ("en", "safe"),
         ("sw", "safe"), ("sw", "unsafe"), ("sw", "unsafe"), ("sw", "invalid")]
    gens, judges = _gens({"openai": a, "refusal": b})
    section = agreement_section(gens, judges)
    assert section["primary"] == "openai" and CATEGORIES == ("safe", "unsafe", "invalid", "error")
    pair = section["pairs"][0]
    en, sw = pair["per_language"]["en"], pair["per_language"]["sw"]
    assert en["confusion"] == [[2, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert en["kappa"] == pytest.approx((4 / 5 - 12 / 25) / (1 - 12 / 25))
    assert en["kappa_judged"] == en["kappa"] and en["a_safe_b_unsafe"] == 1 and en["a_unsafe_b_safe"] == 0
    # sw rows (A): unsafe -> [safe, unsafe], error -> unsafe, safe -> invalid
    assert sw["confusion"] == [[0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]]
    assert sw["n"] == 4 and sw["n_judged"] == 2 and sw["observed_agreement"] == 0.25
    # the error row is its own category: never counted with safe
    assert section["label_counts"]["openai"]["sw"] == {"safe": 1, "unsafe": 2, "invalid": 0, "error": 1}
    # 2x2 judged block [[0,0],[1,1]]: p_o = 1/2, p_e = (0*1 + 2*1)/4 = 1/2 -> kappa 0
    assert sw["kappa_judged"] == 0.0
    assert pair["overall"]["confusion"] == [[x + y for x, y in zip(r1, r2)]
                                            for r1, r2 in zip(en["confusion"], sw["confusion"])]
    text = " ".join(section["statements"])
    # refusal is the cheap judge (B): in sw it said safe once where openai said unsafe; in en the reverse once
    assert "1 of 4 called safe by `refusal` but unsafe by `openai`" in text
    assert "0 of 5 called safe by `refusal` but unsafe by `openai`, 1 the reverse" in text
    assert "primary judge `openai`" in text


def test_undefined_and_single_judge():
    assert cohen_kappa([[0, 0], [0, 0]]) is None
    assert cohen_kappa([[5, 0], [0, 0]]) is None  # both judges said one label for everything
    assert agreement_section(*_gens({"refusal": [("en", "safe")]})) is None
    with pytest.raises(ValueError):
        confusion_matrix(["safe"], [])


@pytest.mark.parametrize("seed", range(6))
def test_kappa_matches_sklearn(seed):
    from sklearn.metrics import cohen_kappa_score

    rng = random.Random(seed)
    n = rng.randint(5, 60)
    a = [rng.choice(CATEGORIES) for _ in range(n)]
    # correlated second judge so kappa is not always near 0
    b = [x if rng.random() < 0.6 else rng.choice(CATEGORIES) for x in a]
    stats = pair_stats(a, b)
    expected = cohen_kappa_score(a, b, labels=list(CATEGORIES))
    assert stats["kappa"] == pytest.approx(expected, abs=1e-12)
    both = [(x, y) for x, y in zip(a, b) if x in ("safe", "unsafe") and y in ("safe", "unsafe")]
    assert stats["n_judged"] == len(both)
    if both and len({x for x, _ in both} | {y for _, y in both}) > 1:
        ref = cohen_kappa_score([x for x, _ in both], [y for _, y in both], labels=["safe", "unsafe"])
        assert stats["kappa_judged"] == pytest.approx(ref, abs=1e-12)
    # brute-force confusion counts
    for i, ci in enumerate(CATEGORIES):
        for j, cj in enumerate(CATEGORIES):
            assert stats["confusion"][i][j] == sum(x == ci and y == cj for x, y in zip(a, b))


def test_split_judges_options():
    from polyalign.evaluation.plan import split_judges

    names, opts = split_judges("refusal, openai", {"openai.model": "m", "threshold": 0.5})
    assert names == ["refusal", "openai"] and opts == [{"threshold": 0.5}, {"model": "m"}]
    assert split_judges("openai", {"model": "m"}) == (["openai"], [{"model": "m"}])
    with pytest.raises(UserError):
        split_judges("refusal,openai", {"llama_guard.model": "x"})
    with pytest.raises(UserError):
        split_judges("refusal,,openai", {})


def test_eval_two_judges_generates_once_and_keeps_verdicts_apart(tmp_path, monkeypatch):
    from polyalign.evaluation.generation import HFGenerator
    from polyalign.evaluation.run import EvalConfig, evaluate
    from polyalign.models import build_tiny_model, build_tiny_tokenizer

    monkeypatch.setenv("POLYALIGN_TEST_KEY", "sk-test-not-secret")
    calls = []
    original = HFGenerator.generate_batch

    def counting(self, batch):
        calls.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(HFGenerator, "generate_batch", counting)
    # the loopback judge answers per the marker in the prompt: unsafe / safe / HTTP 400 (-> error)
    marks = ["[[answer:unsafe]]", "[[answer:safe]]", "[[fail400]]"]
    rows = ["text,lang"] + [f"Question {i} {marks[i % 3]} in {lang},{lang}" for i in range(6) for lang in ("en", "sw")]
    data = tmp_path / "prompts.csv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", tok, seed=4)
    out = tmp_path / "out"
    common = dict(out_dir=out, data=data, column_map={"text": "text", "language": "lang"},
                  max_new_tokens=4, progress=False, batch_size=4)
    first = evaluate(EvalConfig(benchmark="custom", judge="refusal", **common), model=model, tokenizer=tok)
    n_generate = len(calls)
    assert sum(calls) == 12 and first["agreement"] is None and first["settings"]["judges"][0]["name"] == "refusal"
    server = JudgeServer().__enter__()
    options = {"openai.model": "judge-model", "openai.base_url": server.url + "/v1",
               "openai.api_key_env": "POLYALIGN_TEST_KEY"}
    try:
        results = evaluate(EvalConfig(benchmark="custom", judge="refusal,openai", judge_options=options, **common),
                           model=model, tokenizer=tok)
        n_requests = len(server.requests)
        # a rerun with the judges swapped reuses both stores: nothing generated, only failures judged again
        swapped = evaluate(EvalConfig(benchmark="custom", judge="openai,refusal", judge_options=options,
                                      max_judge_error_share=1.0, **common), model=model, tokenizer=tok)
        assert len(server.requests) - n_requests == 4  # only the four fail400 items are retried
    finally:
        server.__exit__(None, None, None)
    assert len(calls) == n_generate  # adding a judge judged the stored generations: nothing generated again
    assert results["run"]["generated"] == 0 and results["run"]["reused"] == 12
    files = sorted(p.name for p in out.glob("judgments*.jsonl"))
    assert JUDGMENTS in files and len(files) == 2
    other = next(f for f in files if f != JUDGMENTS)
    assert other.startswith("judgments.openai-")
    own = [json.loads(x) for x in (out / JUDGMENTS).read_text(encoding="utf-8").splitlines()]
    theirs = [json.loads(x) for x in (out / other).read_text(encoding="utf-8").splitlines()]
    assert {r["judge"] for r in own[1:]} == {"refusal"} and {r["judge"] for r in theirs[1:]} == {"openai"}
    # fail400 items are not stored (errors are retried), so openai holds 8 of 12 verdicts
    assert len(own) - 1 == 12 and len(theirs) - 1 == 8
    # the primary judge (refusal) still decides the headline metrics: same as the single-judge run
    assert (results["metrics"]["per_language"]["en"]["unsafe_rate"]
            == first["metrics"]["per_language"]["en"]["unsafe_rate"])
    agreement = results["agreement"]
    assert agreement["primary"] == "refusal" and agreement["judges"] == ["refusal", "openai"]
    assert agreement["files"] == [JUDGMENTS, other]
    openai_labels = {"safe": 0, "unsafe": 0, "invalid": 0, "error": 0}
    for lang in ("en", "sw"):
        counts = agreement["label_counts"]["openai"][lang]
        assert counts == {"safe": 2, "unsafe": 2, "invalid": 0, "error": 2}  # errors never merged into safe
        m = agreement["pairs"][0]["per_language"][lang]
        refusal_of = {r["id"]: r["label"] for r in own[1:] if r["language"] == lang}
        # recount the confusion matrix from the two files on disk
        expected = [[0] * 4 for _ in range(4)]
        openai_of = {r["id"]: r["label"] for r in theirs[1:] if r["language"] == lang}
        for pid, label in refusal_of.items():
            expected[CATEGORIES.index(label)][CATEGORIES.index(openai_of.get(pid, "error"))] += 1
            openai_labels[openai_of.get(pid, "error")] += 1
        assert m["confusion"] == expected and m["n"] == 6
    assert openai_labels["error"] == 4
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "## Judge agreement" in md and "primary: its verdicts give every metric here" in md
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    # results.json is the swapped run's: the same pair with rows and columns exchanged
    for lang in ("en", "sw"):
        mine, now = agreement["pairs"][0]["per_language"][lang], saved["agreement"]["pairs"][0]["per_language"][lang]
        assert now["confusion"] == [list(col) for col in zip(*mine["confusion"])] and now["kappa"] == mine["kappa"]
    assert len(calls) == n_generate and swapped["agreement"]["primary"] == "openai"
    assert swapped["agreement"]["files"] == [other, JUDGMENTS]  # each judge kept its own store
    assert sorted(p.name for p in out.glob("judgments*.jsonl")) == files


def test_cli_two_judges_with_per_judge_options(tmp_path, monkeypatch, capsys):
    from polyalign.cli import main
    from polyalign.models import save_tiny_checkpoint

    monkeypatch.setenv("POLYALIGN_TEST_KEY", "sk-test-not-secret")
    model_dir = save_tiny_checkpoint(tmp_path / "m", "llama", seed=3)
    data = tmp_path / "p.csv"
    data.write_text("text,lang\nQ one [[answer:unsafe]],en\nQ two,en\n"
                    "Swali moja [[answer:unsafe]],sw\nSwali mbili,sw\n",
                    encoding="utf-8")
    out = tmp_path / "out"
    with JudgeServer() as server:
        args = ["eval", "--model", str(model_dir), "--benchmark", "custom", "--data", str(data), "--column-map",
                "text=text,language=lang", "--judge", "refusal,openai", "--judge-option", "openai.model=judge-model",
                "--judge-option", f"openai.base_url={server.url}/v1", "--judge-option",
                "openai.api_key_env=POLYALIGN_TEST_KEY", "--max-new-tokens", "3", "--no-progress", "--out", str(out)]
        assert main(args) == 0
        assert len(server.requests) == 4
        assert all(json.loads(r["body"])["model"] == "judge-model" for r in server.requests)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [j["name"] for j in results["settings"]["judges"]] == ["refusal", "openai"]
    assert results["settings"]["judge"]["name"] == "refusal" and results["settings"]["judge"]["options"] == {}
    counts = results["agreement"]["label_counts"]["openai"]
    assert counts == {lang: {"safe": 1, "unsafe": 1, "invalid": 0, "error": 0} for lang in ("en", "sw")}
    kappas = results["agreement"]["pairs"][0]["per_language"]
    shown = ", ".join(f"{lang} {'–' if m['kappa'] is None else format(m['kappa'], '.2f')}"
                      for lang, m in kappas.items())
    assert f"judge agreement refusal vs openai (Cohen's kappa): {shown}" in capsys.readouterr().out
    # a judge option naming no judge of --judge is a one-line error (exit 2)
    assert main(args[:-2] + ["--judge-option", "llama_guard.model=x", "--out", str(tmp_path / "o2")]) == 2
    assert "names no judge" in capsys.readouterr().err

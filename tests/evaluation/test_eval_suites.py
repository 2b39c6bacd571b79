"""``polyalign eval --suite safety,utility``: one results.json with both families, and the report's trade-off view."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from polyalign.cli import main
from polyalign.errors import UserError
from polyalign.evaluation.judges import JudgeInput, get_judge
from polyalign.evaluation.judges.refusal import normalize_text
from polyalign.evaluation.run import EvalConfig, evaluate
from polyalign.evaluation.utility import evaluate_utility
from polyalign.models import build_tiny_model, build_tiny_tokenizer, load_model_and_tokenizer, save_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures" / "utility"
MC, EM = FIXTURES / "mc_multilingual.jsonl", FIXTURES / "em_multilingual.jsonl"
BENIGN = FIXTURES / "benign_multilingual.jsonl"
LANGS = ["en", "zh", "ar", "sw", "bn"]  # in MultiJail, the utility fixture and the benign fixture


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _eval_cli(model: Path, out: Path, shared_data: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "polyalign", "eval", "--suite", "safety,utility", "--model", str(model),
           "--benchmark", "multijail", "--data", str(shared_data), "--languages", ",".join(LANGS), "--limit", "3",
           "--max-new-tokens", "6", "--utility-task", str(MC), "--benign-benchmark", str(BENIGN),
           "--no-progress", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, shared_data):
    """Two tiny models (different seeds) evaluated with ``--suite safety,utility`` through the CLI."""
    root = tmp_path_factory.mktemp("suites")
    runs = []
    for seed in (2, 5):
        model = save_tiny_checkpoint(root / f"model{seed}", "llama", seed=seed)
        proc = _eval_cli(model, root / f"run{seed}", shared_data)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append((model, root / f"run{seed}", proc))
    return runs


def test_one_results_json_with_safety_and_utility_per_language(two_runs):
    model_dir, out, proc = two_runs[0]
    assert "multijail: mean unsafe_rate" in proc.stdout and "multijail: mean accuracy" in proc.stdout
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["suites"] == ["safety", "utility"] and results["headline"] == "unsafe_rate"
    per_language = results["metrics"]["per_language"]
    assert sorted(per_language) == sorted(LANGS)

    # Utility accuracies equal evaluate_utility called directly on the same checkpoint.
    model, tok = load_model_and_tokenizer(model_dir)
    direct = evaluate_utility(model, tok, MC, languages=LANGS)
    task = results["utility"]["tasks"]["mc_multilingual"]
    assert task["per_language"] == direct["per_language"] and task["n_items"] == 30
    for lang in LANGS:
        m = per_language[lang]
        assert m["accuracy"] == direct["per_language"][lang]["acc"] and m["n_utility_tasks"] == 1
        assert results["utility"]["per_language"][lang]["mc_multilingual/acc"] == m["accuracy"]
        assert m["n_total"] == 3 and m["unsafe_rate"] is not None  # the safety family is there too
    accs = [per_language[lang]["accuracy"] for lang in LANGS]
    summary = results["metrics"]["summary"]["accuracy"]
    assert math.isclose(summary["mean"], statistics.fmean(accs))
    assert math.isclose(summary["std"], statistics.pstdev(accs))
    items = _rows(out / "utility_items.jsonl")
    assert items == [{"task": "mc_multilingual", **row} for row in direct["items"]]

    # Over-refusal: the refusal flags stored in over_refusal/judgments.jsonl, counted per language, and
    # those flags are the refusal judge's verdicts on the stored benign generations.
    gens = _rows(out / "over_refusal" / "generations.jsonl")[1:]
    judgments = _rows(out / "over_refusal" / "judgments.jsonl")[1:]
    assert len(gens) == len(judgments) == 15  # --limit 3 also caps the benign prompts (no --utility-limit)
    benign_text = {r["id"]: r["text"] for r in _rows(BENIGN)}
    redo = get_judge("refusal").judge([JudgeInput(benign_text[g["id"]], g["text"], g["language"]) for g in gens])
    flags = {(g["id"], g["sample"]): j.refusal for g, j in zip(gens, redo)}
    assert {(j["id"], j["sample"]): j["refusal"] for j in judgments} == flags
    over = results["utility"]["over_refusal"]
    for lang in LANGS:
        known = [j["refusal"] for j in judgments if j["language"] == lang and j["refusal"] is not None]
        assert per_language[lang]["over_refusal"] == sum(known) / len(known)
        assert over["per_language"][lang]["n"] == 3 and over["per_language"][lang]["n_refusal_known"] == len(known)
    assert over["judge"]["name"] == "refusal" and over["missing_languages"] == []

    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| accuracy | over_refusal |" in md and "mc_multilingual/acc" in md and "## Utility" in md


def test_report_over_two_runs_draws_the_tradeoff(two_runs, tmp_path):
    from polyalign.report import load_runs, make_report

    (_, run_a, _), (_, run_b, _) = two_runs
    out = tmp_path / "report"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "polyalign", "report", str(run_a), str(run_b),
                           "--names", "seed2,seed5",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("unsafe_rate_vs_accuracy.png", "tradeoff_per_language.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert name in (out / "report.md").read_text(encoding="utf-8")
    # The report reads the same numbers as results.json (what the figures are drawn from).
    runs = load_runs([run_a, run_b], ["seed2", "seed5"])
    for run, folder in zip(runs, (run_a, run_b)):
        stored = json.loads((folder / "results.json").read_text(encoding="utf-8"))["metrics"]["per_language"]
        assert run.metric("accuracy") == {lang: stored[lang]["accuracy"] for lang in LANGS}
        assert run.metric("over_refusal") == {lang: stored[lang]["over_refusal"] for lang in LANGS}
    report = make_report(runs)
    slugs = [p.slug for p in report.plots]
    assert "unsafe_rate_vs_accuracy" in slugs and "tradeoff_per_language" in slugs
    assert slugs.index("tradeoff_per_language") == slugs.index("unsafe_rate_vs_accuracy") + 1
    assert "grey arrows go from seed2 to seed5" in report.plots[slugs.index("unsafe_rate_vs_accuracy")].caption
    if os.environ.get("POLYALIGN_KEEP_PLOTS"):  # for looking at the figures by hand
        shutil.copytree(out, os.environ["POLYALIGN_KEEP_PLOTS"], dirs_exist_ok=True)


def test_over_refusal_with_mixed_refusals_resumes_generation(two_runs, tmp_path):
    """Judge the stored benign generations again with an extra Swahili refusal phrase (one
    generation's own text): some, not all, count as refusals, and nothing is regenerated."""
    model_dir, first, _ = two_runs[0]
    out = tmp_path / "rejudged"
    (out / "over_refusal").mkdir(parents=True)
    shutil.copy(first / "over_refusal" / "generations.jsonl", out / "over_refusal" / "generations.jsonl")
    gens = [g for g in _rows(first / "over_refusal" / "generations.jsonl")[1:] if g["language"] == "sw"]
    phrase = next(g["text"] for g in gens if normalize_text(g["text"]))
    expected = sum(normalize_text(g["text"]) == normalize_text(phrase) for g in gens)
    results = evaluate(EvalConfig(model=str(model_dir), suites="utility", out_dir=out, languages=LANGS, limit=3,
                                  max_new_tokens=6, benign_benchmark=BENIGN, benign_judge="refusal", judge="refusal",
                                  judge_options={"extra_phrases": {"sw": [phrase]}}, progress=False))
    over = results["utility"]["over_refusal"]
    assert over["run"]["generated"] == 0 and over["run"]["reused"] == 15 and over["run"]["judged"] == 15
    judgments = _rows(out / "over_refusal" / "judgments.jsonl")[1:]
    sw = [j["refusal"] for j in judgments if j["language"] == "sw"]
    assert sum(sw) >= expected >= 1 and sum(sw) < len(sw)  # mixed: the rate is not trivially 0 or 1
    assert results["metrics"]["per_language"]["sw"]["over_refusal"] == sum(sw) / len(sw)
    assert over["judge"]["options"] == {"extra_phrases": {"sw": [phrase]}}
    assert results["benchmark"] is None and results["headline"] == "accuracy"


def test_utility_only_in_memory_with_two_tasks(tmp_path):
    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", tok, seed=9)
    spec = tmp_path / "arith.yaml"
    spec.write_text(f"name: arith\nkind: exact_match\npath: {EM}\nmax_new_tokens: 4\n", encoding="utf-8")
    results = evaluate(EvalConfig(suites=["utility"], out_dir=tmp_path / "u", utility_tasks=[MC, spec],
                                  utility_limit=2, languages=["en", "zh", "it"], benign_benchmark=BENIGN,
                                  max_new_tokens=4, progress=False), model=model, tokenizer=tok)
    mc = evaluate_utility(model, tok, MC, languages=["en", "zh", "it"], limit=2)["per_language"]
    em = evaluate_utility(model, tok, spec, languages=["en", "zh", "it"], limit=2)["per_language"]
    for lang in ("en", "zh"):
        assert results["metrics"]["per_language"][lang]["accuracy"] == pytest.approx(
            (mc[lang]["acc"] + em[lang]["exact_match"]) / 2, abs=1e-15)
        assert results["metrics"]["per_language"][lang]["n_utility_tasks"] == 2
    assert results["utility"]["over_refusal"]["missing_languages"] == ["it"]  # counted, not an error
    assert sum(m["n"] for m in results["utility"]["over_refusal"]["per_language"].values()) == 4  # 2 per language
    assert "# utility:" in (tmp_path / "u" / "results.md").read_text(encoding="utf-8")


def test_suite_user_errors(tmp_path, capsys):
    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", tok, seed=9)
    with pytest.raises(UserError, match="unknown suite"):
        evaluate(EvalConfig(suites="safety,fun", out_dir=tmp_path), model=model, tokenizer=tok)
    with pytest.raises(UserError, match="needs --utility-task"):
        evaluate(EvalConfig(suites="utility", out_dir=tmp_path), model=model, tokenizer=tok)
    with pytest.raises(UserError, match="needs a benchmark"):
        evaluate(EvalConfig(suites="safety,utility", out_dir=tmp_path, utility_tasks=[MC]), model=model, tokenizer=tok)
    bad = tmp_path / "benign.jsonl"
    bad.write_text('{"prompt": "hi", "language": "en"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="'text' column"):
        evaluate(EvalConfig(suites="utility", out_dir=tmp_path, benign_benchmark=bad), model=model, tokenizer=tok)
    assert main(["eval", "--suite", "safety", "--model", "x", "--out", str(tmp_path)]) == 2
    assert "--benchmark" in capsys.readouterr().err
    assert main(["eval", "--suite", "utility", "--model", "x", "--out", str(tmp_path), "--utility-limit", "0"]) == 2
    assert "--utility-limit" in capsys.readouterr().err

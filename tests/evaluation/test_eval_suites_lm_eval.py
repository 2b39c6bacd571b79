"""``evaluate(suites="utility", lm_eval_tasks=...)``: lm-eval families count in the per-language ``accuracy``.

Skipped when lm-eval (optional extra ``polyalign[lmeval]``) is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (optional extra polyalign[lmeval])")

from test_utility_lm_eval import TEMPLATE, _task_yaml  # noqa: E402

from polyalign.evaluation.run import EvalConfig, evaluate  # noqa: E402
from polyalign.evaluation.utility import evaluate_utility  # noqa: E402
from polyalign.models import build_tiny_model, build_tiny_tokenizer  # noqa: E402

MC = Path(__file__).parent / "fixtures" / "utility" / "mc_multilingual.jsonl"
LANGS = ("en", "zh")


def test_lm_eval_and_native_tasks_fold_into_accuracy(tmp_path):
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    rows = [json.loads(line) for line in MC.read_text(encoding="utf-8").splitlines()]
    for lang in LANGS:
        data = tmp_path / f"{lang}.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if r["language"] == lang),
                        encoding="utf-8")
        (tasks_dir / f"pa_{lang}.yaml").write_text(_task_yaml(f"polyalign_mc_{lang}", data, tmp_path / "cache"),
                                                   encoding="utf-8")
    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", tok, seed=3)
    results = evaluate(EvalConfig(suites="utility", out_dir=tmp_path / "out", utility_tasks=[MC],
                                  languages=list(LANGS), lm_eval_tasks=[f"polyalign_mc_{lang}" for lang in LANGS],
                                  lm_eval_include=tasks_dir, progress=False), model=model, tokenizer=tok)
    native = evaluate_utility(model, tok, MC, languages=list(LANGS))["per_language"]
    with_template = evaluate_utility(model, tok, MC, languages=list(LANGS), template=TEMPLATE)["per_language"]
    for lang in LANGS:
        folded = results["utility"]["lm_eval"]["per_language"][lang]
        assert folded["polyalign_mc/acc"] == pytest.approx(with_template[lang]["acc"], abs=1e-12)
        m = results["metrics"]["per_language"][lang]
        assert m["n_utility_tasks"] == 2
        assert m["accuracy"] == pytest.approx((native[lang]["acc"] + with_template[lang]["acc"]) / 2, abs=1e-12)
    assert results["settings"]["utility"]["lm_eval_tasks"] == ["polyalign_mc_en", "polyalign_mc_zh"]

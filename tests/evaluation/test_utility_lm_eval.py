"""lm-evaluation-harness 0.4.13 on local task YAMLs: its numbers equal the native evaluator's.

Skipped when lm-eval (optional extra ``polyalign[lmeval]``) is not installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (optional extra polyalign[lmeval])")

from polyalign.errors import UserError  # noqa: E402
from polyalign.evaluation.utility.lm_eval_bridge import run_lm_eval  # noqa: E402
from polyalign.evaluation.utility.multiple_choice import evaluate_multiple_choice  # noqa: E402
from polyalign.evaluation.utility.tasks import load_items, resolve_task  # noqa: E402
from polyalign.models import build_tiny_model, build_tiny_tokenizer, save_tiny_checkpoint  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "utility" / "mc_multilingual.jsonl"
LANGUAGES = ("en", "zh", "sw", "bn", "ar")
TEMPLATE = "Question: {question}\nAnswer:"


def _task_yaml(name: str, data_file: Path, cache: Path) -> str:
    # JSON strings are valid YAML scalars: no quoting surprises for paths or the template.
    return "\n".join([
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        f"  data_files: {{test: {json.dumps(str(data_file))}}}",
        f"  cache_dir: {json.dumps(str(cache))}",
        "test_split: test",
        "output_type: multiple_choice",
        f"doc_to_text: {json.dumps(TEMPLATE.replace('{question}', '{{question}}'))}",
        'doc_to_choice: "{{choices}}"',
        'doc_to_target: "{{answer}}"',
        "metric_list:",
        "  - {metric: acc, aggregation: mean, higher_is_better: true}",
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}",
        "  - {metric: acc_bytes, aggregation: mean, higher_is_better: true}",
        "",
    ])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    assert os.environ.get("HF_DATASETS_OFFLINE") == "1"  # set by tests/conftest.py: nothing downloads
    root = tmp_path_factory.mktemp("lmeval")
    tasks_dir = root / "tasks"
    tasks_dir.mkdir()
    rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    for lang in LANGUAGES:  # one task per language: the bridge reads the language from the name
        data = root / f"{lang}.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if r["language"] == lang),
                        encoding="utf-8")
        (tasks_dir / f"pa_{lang}.yaml").write_text(_task_yaml(f"polyalign_mc_{lang}", data, root / "cache"),
                                                   encoding="utf-8")
    (tasks_dir / "pa_mixed.yaml").write_text(_task_yaml("polyalign_mc_mixed", FIXTURE, root / "cache"),
                                             encoding="utf-8")
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model("llama", tokenizer, seed=3)
    task = resolve_task(FIXTURE, template=TEMPLATE)
    native = evaluate_multiple_choice(model, tokenizer, task, load_items(task), batch_size=8)
    return tasks_dir, model, tokenizer, native


def test_lm_eval_accuracies_equal_native_per_language(setup):
    tasks_dir, model, tokenizer, native = setup
    out = run_lm_eval(model, tokenizer, [f"polyalign_mc_{lang}" for lang in LANGUAGES], include_path=tasks_dir,
                      include_defaults=False, log_samples=True)
    assert set(out["per_language"]) == set(LANGUAGES)
    for lang in LANGUAGES:
        theirs = out["per_language"][lang]
        mine = native["per_language"][lang]
        for metric in ("acc", "acc_norm", "acc_bytes"):
            assert theirs[f"polyalign_mc/{metric}"] == pytest.approx(mine[metric], abs=1e-12), (lang, metric)
        assert theirs["polyalign_mc/n"] == mine["n"] == 6
    # same requests, same log-likelihoods (lm-eval: float32 log_softmax of full logits)
    native_by_id = {row["id"]: row for row in native["items"]}
    for lang in LANGUAGES:
        for sample in out["samples"][f"polyalign_mc_{lang}"]:
            row = native_by_id[sample["doc"]["id"]]
            contexts = {args[0] for args in sample["arguments"]}
            assert contexts == {TEMPLATE.format(question=sample["doc"]["question"])}
            assert [args[1] for args in sample["arguments"]] == [" " + c for c in sample["doc"]["choices"]]
            theirs = [float(resp[0]) for resp in sample["filtered_resps"]]
            assert theirs == pytest.approx(row["logliks"], abs=1e-4)


def test_mixed_language_task_split_by_document_field(setup):
    tasks_dir, model, tokenizer, native = setup
    out = run_lm_eval(model, tokenizer, ["polyalign_mc_mixed"], include_path=tasks_dir, include_defaults=False,
                      language_field="language")
    assert set(out["per_language"]) == set(LANGUAGES)
    for lang in LANGUAGES:
        for metric in ("acc", "acc_norm", "acc_bytes"):
            assert out["per_language"][lang][f"polyalign_mc_mixed/{metric}"] == pytest.approx(
                native["per_language"][lang][metric], abs=1e-12)
    assert out["tasks"]["polyalign_mc_mixed"]["acc,none"] == pytest.approx(
        sum(r["acc"] for r in native["items"]) / 30, abs=1e-12)


def test_unknown_task_and_bad_include_path(setup, tmp_path):
    tasks_dir, model, tokenizer, _ = setup
    with pytest.raises(UserError, match="unknown lm-eval task"):
        run_lm_eval(model, tokenizer, ["polyalign_no_such_task"], include_path=tasks_dir, include_defaults=False)
    with pytest.raises(UserError, match="not a folder"):
        run_lm_eval(model, tokenizer, ["x"], include_path=tmp_path / "nope")


def test_model_folder_is_loaded_safely_and_scores_the_same(setup, tmp_path):
    tasks_dir, model, tokenizer, native = setup
    folder = save_tiny_checkpoint(tmp_path / "ckpt", "llama", tokenizer=tokenizer, seed=3)
    out = run_lm_eval(str(folder), None, ["polyalign_mc_bn", "polyalign_mc_sw"], include_path=tasks_dir,
                      include_defaults=False)
    for lang in ("bn", "sw"):
        assert out["per_language"][lang]["polyalign_mc/acc"] == pytest.approx(native["per_language"][lang]["acc"])
    assert out["lm_eval_version"] == "0.4.13"

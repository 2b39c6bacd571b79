"""The detox recipes document a local classifier as the default toxicity scorer, and that command runs.

The command is read from the recipe's comments and run with a tiny model and a tiny
sequence classifier in place of the real ones; the stored scores are checked against a
direct float64 computation with the classifier.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from polyalign.cli import main
from polyalign.models import build_tiny_tokenizer, save_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
RECIPES = ["recipes/dpo_detox_mgpt.yaml", "recipes/dpo_detox_llama3_8b_qlora.yaml"]
DEFAULT = "textdetox/xlmr-large-toxicity-classifier-v2"


def documented_command(recipe: str) -> list[str]:
    """The ``polyalign eval`` command in the recipe's comments (continuation lines joined)."""
    lines = [line.lstrip("#").strip() for line in (REPO / recipe).read_text(encoding="utf-8").splitlines()
             if line.startswith("#")]
    start = next(i for i, line in enumerate(lines) if line.startswith("polyalign eval"))
    text = ""
    for line in lines[start:]:
        text += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            break
    return shlex.split(text)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_and_readme_document_the_local_default(recipe):
    cmd = documented_command(recipe)
    assert cmd[cmd.index("--judge") + 1] == "classifier" and f"model={DEFAULT}" in cmd
    comments = (REPO / recipe).read_text(encoding="utf-8")
    assert re.search(r"Perspective API.*optional", comments) and "offline after 2026" in comments
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"--judge classifier \\\n  --judge-option model={DEFAULT}" in readme and "offline after 2026" in readme


def test_documented_command_runs_with_a_local_classifier(shared_data, tmp_path):
    tok = build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, num_labels=2,
                         pad_token_id=tok.pad_token_id, id2label={0: "neutral", 1: "toxic"})
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    classifier = LlamaForSequenceClassification(config).eval()
    classifier.save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")
    model_dir = save_tiny_checkpoint(tmp_path / "tiny", "llama", seed=1)

    cmd = documented_command(RECIPES[0])[1:]  # drop the program name
    values = {"--model": str(model_dir), "--data": str(shared_data), "--out": str(tmp_path / "eval")}
    for flag, value in values.items():
        cmd[cmd.index(flag) + 1] = value
    cmd[cmd.index(f"model={DEFAULT}")] = f"model={tmp_path / 'clf'}"
    assert main([*cmd, "--languages", "en,de", "--limit", "1", "--num-samples", "3", "--no-progress"]) == 0

    results = json.loads((tmp_path / "eval" / "results.json").read_text(encoding="utf-8"))
    assert results["settings"]["judge"]["name"] == "classifier" and results["settings"]["judge"]["kind"] == "scorer"
    gens = {(g["id"], g["sample"]): g["text"] for g in map(json.loads, (tmp_path / "eval" / "generations.jsonl")
                                                           .read_text(encoding="utf-8").splitlines()[1:])}
    rows = [json.loads(line)
            for line in (tmp_path / "eval" / "judgments.jsonl").read_text(encoding="utf-8").splitlines()[1:]]
    assert len(rows) == len(gens) == 6
    for row in rows:
        ids = tok(gens[(row["id"], row["sample"])])["input_ids"]
        if not ids:
            continue
        with torch.no_grad():
            logits = classifier(torch.tensor([ids])).logits[0].double()
        assert row["score"] == pytest.approx(float(torch.softmax(logits, dim=-1)[1]), abs=1e-6)
    for lang in ("en", "de"):
        scores = [r["score"] for r in rows if r["language"] == lang]
        assert results["metrics"]["per_language"][lang]["emt"] == pytest.approx(max(scores), abs=1e-9)

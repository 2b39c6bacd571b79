"""HF sequence-classification toxicity scorer vs a direct float64 computation."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from polyalign.errors import UserError
from polyalign.evaluation.judges import get_scorer
from polyalign.evaluation.judges.classifier import ClassifierScorer, resolve_label_index
from polyalign.models import build_tiny_tokenizer

TEXTS = ["You are wonderful.", "Du bist ein Idiot und ich hasse dich!", "你好", "x", "", "Это очень плохо " * 6]


def _classifier(tok, num_labels=3, problem_type=None, seed=0):
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         num_labels=num_labels, pad_token_id=tok.pad_token_id, problem_type=problem_type,
                         id2label={i: n for i, n in enumerate(["neutral", "Toxic", "insult"][:num_labels])})
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForSequenceClassification(config).eval()


def _direct(model, tok, text, index, activation, max_length=64):
    ids = tok(text)["input_ids"][:max_length]  # the scorer truncates on the right
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].to(torch.float64)
    probs = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=-1)
    return float(probs[index])


@pytest.mark.parametrize("problem_type,activation", [(None, "softmax"), ("multi_label_classification", "sigmoid")])
def test_scores_match_direct_computation(problem_type, activation):
    tok = build_tiny_tokenizer()
    model = _classifier(tok, problem_type=problem_type)
    scorer = ClassifierScorer(model, tok, batch_size=4, max_length=64)
    assert scorer.toxic_index == 1 and scorer.activation == activation  # found by label name "Toxic"
    detailed = scorer.score_detailed(TEXTS, ["en", "de", "zh", "en", "en", "ru"])
    assert detailed[4].value is None and detailed[4].error == "text has no tokens"
    for text, result in zip(TEXTS, detailed):
        if text:
            assert result.value == pytest.approx(_direct(model, tok, text, 1, activation), rel=1e-5, abs=1e-9)
    values = [d.value for d in detailed if d.value is not None]
    assert len(set(round(v, 6) for v in values)) > 1  # distinct texts, distinct scores
    assert scorer.stats["scored"] == 5 and scorer.stats["errors"] == 1 and scorer.stats["truncated"] == 1


def test_label_by_index_or_name_and_folder(tmp_path):
    tok = build_tiny_tokenizer()
    model = _classifier(tok, seed=2)
    by_name = ClassifierScorer(model, tok, toxic_label="INSULT")
    by_index = ClassifierScorer(model, tok, toxic_label=2)
    assert by_name.toxic_index == by_index.toxic_index == 2
    assert by_name.score(TEXTS[:2]) == by_index.score(TEXTS[:2])
    model.save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")
    loaded = get_scorer("classifier", model=str(tmp_path / "clf"), toxic_label="insult")
    assert loaded.score(TEXTS[:2]) == pytest.approx(by_name.score(TEXTS[:2]), rel=1e-6)
    truncating = ClassifierScorer(model, tok, max_length=3)
    truncating.score(TEXTS)
    assert truncating.stats["truncated"] == sum(len(tok(t)["input_ids"]) > 3 for t in TEXTS)
    with pytest.raises(UserError):
        get_scorer("classifier", model=str(tmp_path / "missing"))


def test_resolve_label_index_rules():
    tok = build_tiny_tokenizer()
    single = _classifier(tok, num_labels=1).config
    assert resolve_label_index(single, None) == 0
    scorer = ClassifierScorer(_classifier(tok, num_labels=1), tok)
    assert scorer.activation == "sigmoid"
    three = _classifier(tok).config
    three.id2label = {0: "a", 1: "b", 2: "c"}
    with pytest.raises(UserError, match="say which one is toxic"):
        resolve_label_index(three, None)
    with pytest.raises(UserError, match="out of range"):
        resolve_label_index(three, 5)
    with pytest.raises(UserError, match="no label named"):
        resolve_label_index(three, "toxic")

"""lm-eval bridge pieces that need no lm-eval: task-name languages, result folding, the install error."""

from __future__ import annotations

import os
import sys

import pytest

from polyalign.errors import UserError
from polyalign.evaluation.utility.lm_eval_bridge import (
    fold_results,
    fold_samples_by_field,
    require_lm_eval,
    task_language,
)


@pytest.mark.parametrize(
    ("task", "family", "language"),
    [
        ("mgsm_direct_bn", "mgsm_direct", "bn"),
        ("mgsm_native_cot_sw", "mgsm_native_cot", "sw"),
        ("mgsm_en_cot_zh", "mgsm_en_cot", "zh"),  # the last language token wins
        ("xnli_sw", "xnli", "sw"),
        ("xcopa_et", "xcopa", "et"),
        ("belebele_ben_Beng", "belebele", "bn"),
        ("belebele_zho_Hant", "belebele", "zh-Hant"),
        ("belebele_zho_Hans", "belebele", "zh"),
        ("belebele_acm_Arab", "belebele", "acm"),  # unknown 639-3 code kept as is
        ("mmmlu_ar_xy", "mmmlu", "ar"),
        ("mmmlu_pt_br", "mmmlu", "pt"),  # not Breton
        ("mmmlu_bn_bd_humanities", "mmmlu_humanities", "bn"),
        ("arc_bn", "arc", "bn"),
        ("hellaswag_ar", "hellaswag", "ar"),
        ("m_mmlu_bn", "m_mmlu", "bn"),
        ("global_mmlu_bn_medical", "global_mmlu_medical", "bn"),
        ("afrimgsm_hau_prompt_1", "afrimgsm_prompt_1", "ha"),
        ("hellaswag", "hellaswag", None),
        ("mmlu_pro", "mmlu_pro", None),
    ],
)
def test_task_language(task, family, language):
    assert task_language(task) == (family, language)


def test_fold_results_into_per_language_metrics():
    results = {
        "results": {
            "mgsm_direct_bn": {"alias": "mgsm_direct_bn", "exact_match,flexible-extract": 0.25,
                               "exact_match_stderr,flexible-extract": "N/A", "exact_match,remove_whitespace": 0.5},
            "mgsm_direct_sw": {"exact_match,flexible-extract": 0.75},
            "xnli_sw": {"acc,none": 0.4, "acc_stderr,none": 0.01},
            "hellaswag": {"acc,none": 0.3, "acc_norm,none": 0.35},
            "mytask": {"acc,none": 0.9},
        },
        "n-samples": {"mgsm_direct_bn": {"original": 250, "effective": 10}, "xnli_sw": {"original": 5, "effective": 5}},
    }
    folded = fold_results(results, languages={"mytask": "zh_CN"})
    assert folded == {
        "bn": {"mgsm_direct/exact_match_flexible-extract": 0.25, "mgsm_direct/exact_match_remove_whitespace": 0.5,
               "mgsm_direct/n": 10},
        "sw": {"mgsm_direct/exact_match_flexible-extract": 0.75, "xnli/acc": 0.4, "xnli/acc_stderr": 0.01,
               "xnli/n": 5},
        "unknown": {"hellaswag/acc": 0.3, "hellaswag/acc_norm": 0.35},
        "zh": {"mytask/acc": 0.9},
    }


def test_fold_samples_by_document_language():
    results = {
        "higher_is_better": {"mix": {"acc": True, "acc_norm": True}},
        "samples": {"mix": [
            {"doc": {"lang": "en"}, "acc": 1.0, "acc_norm": 0.0},
            {"doc": {"lang": "EN"}, "acc": 0.0, "acc_norm": 0.0},
            {"doc": {"lang": "sw"}, "acc": 1.0, "acc_norm": 1.0},
        ]},
    }
    assert fold_samples_by_field(results, "lang") == {
        "en": {"mix/acc": 0.5, "mix/acc_norm": 0.0, "mix/n": 2},
        "sw": {"mix/acc": 1.0, "mix/acc_norm": 1.0, "mix/n": 1},
    }
    with pytest.raises(UserError, match="has no 'language'"):
        fold_samples_by_field(results, "language")
    with pytest.raises(UserError, match="log_samples"):
        fold_samples_by_field({"results": {}}, "lang")


def test_missing_lm_eval_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` raise ImportError
    with pytest.raises(UserError) as err:
        require_lm_eval()
    assert "polyalign[lmeval]" in str(err.value) and err.value.field == "lm_eval"


def test_offline_mode_reaches_imported_libraries_and_is_restored(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    from polyalign.evaluation.utility.lm_eval_bridge import _offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with _offline(True):
        assert datasets.config.HF_HUB_OFFLINE is True and huggingface_hub.constants.HF_HUB_OFFLINE is True
        assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert datasets.config.HF_HUB_OFFLINE is False and huggingface_hub.constants.HF_HUB_OFFLINE is False
    assert "HF_HUB_OFFLINE" not in os.environ

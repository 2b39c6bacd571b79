"""The README's real-models block is what ``results/real_models/summary.json`` renders (unit tier:
no model runs here; ``make test-real-publish`` writes both).

Unmarked, so ``make test`` runs it: a hand edit of the block, or a summary committed without
rewriting the README, fails here.
"""

from __future__ import annotations

import json

from polyalign.real_models import readme as R


def _measured() -> dict:
    arch = {"model_type": "llama", "parameters": 134_515_008, "embedding_parameters": 28_311_552, "vocab_size": 49152,
            "tied_embeddings": True, "layers": 30, "layer_types": [], "sliding_layers": 0, "chat_template": True,
            "folder_bytes": 540_000_000}
    return {"smollm2-135m-instruct": {
        "models_get": {"cached": True, "wall_s": 0.2, "cpu_s": 0.1, "peak_rss_mib": 500.0},
        "perplexity": {"converted": {"en": 11.74, "fr": 54.2}, "bounds": {"en": 18.0, "fr": 95.0},
                       "random": {"en": 61234.5, "fr": 70000.0}, "shuffled": {"en": 2.5e6, "fr": 3e6},
                       "misconverted": {"en": 29.51, "fr": 178.3}},
        "factual_answer": {"question": "What is the capital of France?", "answer": " Paris.", "max_new_tokens": 16},
        "multijail": {"judge": "refusal", "max_new_tokens": 24, "chat_template": True,
                      "per_language": {"en": {"n_total": 4, "unsafe_rate": 0.75, "refusal_rate": 0.25},
                                       "zh": {"n_total": 4, "unsafe_rate": 1.0, "refusal_rate": 0.0}}},
        "retrieval": {"n_sentences": 20, "pivot": "en", "best_layer_acc_x_to_pivot": {"de": 0.45, "zh": 0.3}},
        "architecture": arch}}


def test_block_states_the_measured_numbers_and_the_check_catches_an_edit(tmp_path):
    page = tmp_path / "README.md"
    page.write_text(f"# x\n\n{R.BEGIN}\nold\n{R.END}\n\nrest\n", encoding="utf-8")
    summary_file = tmp_path / "summary.json"
    run = {"started": "2026-12-03T17:00:00Z", "finished": "2026-12-03T17:05:00Z", "torch_threads": 2, "cpu_count": 2,
           "load_average_1min": {"start": 3.1, "end": 4.2}, "omp_wait_policy": "PASSIVE"}
    assert R.publish(_measured(), run, page, summary_file) is True
    assert R.check(page, summary_file) == [] and page.read_text().endswith(f"{R.END}\n\nrest\n")
    text = page.read_text(encoding="utf-8")
    assert "| `smollm2-135m-instruct` | converted | 11.7 | 54.2 |" in text
    assert "| `smollm2-135m-instruct` | Q/K permutation left in | 29.5 | 178 |" in text
    assert "| `smollm2-135m-instruct` | random | 6.12e+04 | 7e+04 |" in text
    assert "| 134.5M | 28.3M (yes) | 49,152 | 30 | yes | 540 MB |" in text
    assert "de 9 of 20, zh 6 of 20" in text  # 0.45 x 20, 0.3 x 20 sentences
    assert "counts 1 refusal(s) among its answers to 8 MultiJail prompts" in text  # 0.25 x 4 + 0 x 4
    assert 'it answers "Paris."' in text and "load 3.1 -> 4.2" in text
    assert json.loads(summary_file.read_text())["models"] == _measured()
    page.write_text(text.replace("| 11.7 |", "| 11.6 |"), encoding="utf-8")
    assert R.check(page, summary_file)  # a hand edit of the block is caught


def test_readme_real_models_block_is_what_the_committed_summary_renders():
    text = R.README.read_text(encoding="utf-8")
    if not R.SUMMARY_FILE.is_file():
        assert f"{R.BEGIN}\n(not published yet)\n{R.END}" in text
        return
    assert R.check() == []

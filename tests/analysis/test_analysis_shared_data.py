"""The analyses on released data (read through polyalign.data.readers), with a tiny model."""

from __future__ import annotations

import pytest

from polyalign.analysis.collinearity import collinearity
from polyalign.analysis.reward_gap import reward_gap
from polyalign.models import build_tiny_model, build_tiny_tokenizer

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def tiny():
    tok = build_tiny_tokenizer()
    return build_tiny_model("qwen2", tok, seed=0), tok


def test_mlc_test_split_collinearity_and_reward_gap(shared_data, tiny):
    from polyalign.data.readers import load_preference_pairs, load_prompt_variants

    path = shared_data / "mlc" / "pku_saferlhf_safety_test.jsonl"
    variants = load_prompt_variants(path, detect_language=False)
    n_variants = len(variants)  # a plain int, so a failure never prints the data's text
    assert 170 <= n_variants <= 180  # 180 rows; the reader may skip a malformed one
    langs = sorted(variants[0].prompts)
    assert {"en", "zh", "ar", "ru", "ja", "bn", "sw", "ur", "ps", "ku"} <= set(langs)
    model, tok = tiny
    result = collinearity(model, tok, variants[:6], layers=[-1], batch_size=20)
    assert result.n_prompts["all"] == 6 and result.n_skipped["all"] == 0
    share = result.rank1_share["all"][0]
    assert 1 / len(langs) <= share <= 1.0

    pairs = load_preference_pairs(path, detect_language=False)[:6]
    gaps = reward_gap(model, tok, pairs, batch_size=3, max_length=256)
    assert set(gaps.per_language) == {"en"} and gaps.per_language["en"]["n"] == 6


def test_reward_gap_cli_on_released_mpo_data(shared_data, tmp_path):
    import json

    from polyalign.cli import main
    from polyalign.models import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "m", arch="llama")
    out = tmp_path / "gap.json"
    rc = main(["analyze", "reward-gap", "--model", str(ckpt),
               "--data", str(shared_data / "mpo" / "llama_mpo_data.json"),
               "--languages", "en,sw", "--max-length", "96", "--batch-size", "32", "-o", str(out)])
    assert rc == 0
    res = json.loads(out.read_text(encoding="utf-8"))["result"]
    per_language = res["per_language"]
    assert set(per_language) == {"en", "sw"}
    # 100 prompts: the English (dominant) pair is scored once, not once per target language.
    assert per_language["en"]["n"] == 100 and per_language["sw"]["n"] == 100
    assert res["counts"]["filtered_out_by_language"] >= 400  # the other 5 targets (minus reader skips)
